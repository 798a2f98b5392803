"""Reads GraphQL documents far enough to judge a mutation: every operation, the top-level
fields of every mutation (aliases resolved) and their arguments as values, with the
operation's variables resolved from the request or their defaults.

Pure functions, no mitmproxy imports; the language is https://spec.graphql.org/. What
this reader cannot follow (a fragment at the top level of a mutation, a syntax it does
not know, a variable without a value) raises GraphQLSyntaxError, and the caller refuses
the request: bottle never guesses what a mutation does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class GraphQLSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    kind: str  # name | punct | spread | string | number
    text: str  # the token as written; for strings, the decoded value


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class EnumValue:
    name: str


@dataclass(frozen=True)
class Number:
    text: str


@dataclass(frozen=True)
class Field:
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class Operation:
    kind: str  # query | mutation | subscription
    variables: frozenset[str] = frozenset()  # declared names
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fields: tuple[Field, ...] = ()  # top-level fields; mutations only


_TOKEN_RE = re.compile(
    r'(?P<ws>[\s,\ufeff]+|#[^\n\r]*)'
    r'|(?P<block>"""(?:\\"""|[^"]|"(?!""))*""")'
    r'|(?P<string>"(?:\\.|[^"\\\n\r])*")'
    r'|(?P<spread>\.\.\.)'
    r'|(?P<name>[_A-Za-z][_0-9A-Za-z]*)'
    r'|(?P<number>-?[0-9][0-9.eE+-]*)'
    r'|(?P<punct>[!$&()\:=@\[\]{|}])'
)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def tokens(text: str) -> list[Token]:
    """Names, punctuators, `...`, strings (decoded) and numbers; comments and commas vanish."""
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise GraphQLSyntaxError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "block":
            out.append(Token("string", _block_string(m.group()[3:-3])))
        elif kind == "string":
            out.append(Token("string", _string(m.group()[1:-1])))
        else:
            out.append(Token(kind, m.group()))
    return out


def _string(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
            continue
        if esc != "u":
            raise GraphQLSyntaxError(f"unknown escape \\{esc} in a string")
        if body[i + 2:i + 3] == "{":
            end = body.find("}", i + 3)
            digits, i = body[i + 3:end], end + 1
            if end < 0 or not re.fullmatch(r"[0-9A-Fa-f]{1,6}", digits):
                raise GraphQLSyntaxError("bad \\u{...} escape in a string")
        else:
            digits, i = body[i + 2:i + 6], i + 6
            if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                raise GraphQLSyntaxError("bad \\u escape in a string")
        if int(digits, 16) > 0x10FFFF:
            raise GraphQLSyntaxError("a \\u escape beyond Unicode in a string")
        out.append(chr(int(digits, 16)))
    try:
        # A surrogate pair written as two \u escapes is one character.
        return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise GraphQLSyntaxError("a lone surrogate in a string") from None


def _block_string(raw: str) -> str:
    """The spec's BlockStringValue: common indentation and blank first/last lines removed."""
    lines = re.split(r"\r\n|\n|\r", raw.replace('\\"""', '"""'))
    indents = [len(line) - len(line.lstrip(" \t")) for line in lines[1:] if line.strip(" \t")]
    if indents:
        common = min(indents)
        lines = lines[:1] + [line[common:] for line in lines[1:]]
    while lines and not lines[0].strip(" \t"):
        lines.pop(0)
    while lines and not lines[-1].strip(" \t"):
        lines.pop()
    return "\n".join(lines)


class _Reader:
    def __init__(self, toks: list[Token]) -> None:
        self.toks, self.i = toks, 0

    def peek(self) -> str | None:
        """The next token's text if it is a name, punctuator or spread; '"' / '0' for values."""
        if self.i >= len(self.toks):
            return None
        tok = self.toks[self.i]
        return {"string": '"', "number": "0"}.get(tok.kind, tok.text)

    def next(self) -> Token:
        if self.i >= len(self.toks):
            raise GraphQLSyntaxError("unexpected end of document")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.kind not in ("punct", "spread") or tok.text != text:
            raise GraphQLSyntaxError(f"expected {text!r}, found {tok.text!r}")

    def name(self) -> str:
        tok = self.next()
        if tok.kind != "name":
            raise GraphQLSyntaxError(f"expected a name, found {tok.text!r}")
        return tok.text

    def skip_balanced(self) -> None:
        """Skip one (...), {...} or [...] group starting at the current token."""
        pairs = {"(": ")", "{": "}", "[": "]"}
        first = self.next()
        if first.kind != "punct" or first.text not in pairs:
            raise GraphQLSyntaxError(f"expected a group, found {first.text!r}")
        stack = [pairs[first.text]]
        while stack:
            tok = self.next()
            if tok.kind != "punct":
                continue
            if tok.text in pairs:
                stack.append(pairs[tok.text])
            elif tok.text in (")", "}", "]") and tok.text != stack.pop():
                raise GraphQLSyntaxError(f"unbalanced {tok.text!r}")

    def directives(self) -> None:
        while self.peek() == "@":
            self.next()
            self.name()
            if self.peek() == "(":
                self.skip_balanced()

    def value(self, const: bool = False) -> Any:
        tok = self.next()
        if tok.kind == "string":
            return tok.text
        if tok.kind == "number":
            return Number(tok.text)
        if tok.kind == "name":
            return {"true": True, "false": False, "null": None}.get(tok.text, EnumValue(tok.text))
        if tok.text == "$" and not const:
            return Variable(self.name())
        if tok.text == "[":
            items = []
            while self.peek() != "]":
                items.append(self.value(const))
            self.next()
            return items
        if tok.text == "{":
            fields: dict[str, Any] = {}
            while self.peek() != "}":
                key = self.name()
                self.expect(":")
                if key in fields:
                    raise GraphQLSyntaxError(f"input field {key!r} given twice")
                fields[key] = self.value(const)
            self.next()
            return fields
        raise GraphQLSyntaxError(f"expected a value, found {tok.text!r}")


def parse(document: str) -> list[Operation]:
    """Every operation of document; mutations with their top-level fields and arguments."""
    r = _Reader(tokens(document))
    operations: list[Operation] = []
    if r.peek() is None:
        raise GraphQLSyntaxError("empty document")
    while r.peek() is not None:
        if r.peek() == "{":
            r.skip_balanced()
            operations.append(Operation("query"))
            continue
        keyword = r.name()
        if keyword == "fragment":
            r.name()
            if r.name() != "on":
                raise GraphQLSyntaxError("expected 'on' in a fragment")
            r.name()
            r.directives()
            _require(r, "{")
            r.skip_balanced()
            continue
        if keyword not in ("query", "mutation", "subscription"):
            raise GraphQLSyntaxError(f"unknown definition {keyword!r}")
        if r.peek() not in ("(", "@", "{"):
            r.name()
        defaults = _variable_definitions(r) if r.peek() == "(" else {}
        declared = frozenset(defaults)
        r.directives()
        _require(r, "{")
        if keyword == "mutation":
            fields = _top_level_fields(r)
        else:
            r.skip_balanced()
            fields = ()
        operations.append(Operation(keyword, declared, {k: v for k, v in defaults.items() if v is not _NO_DEFAULT},
                                    fields))
    return operations


_NO_DEFAULT = object()


def _variable_definitions(r: _Reader) -> dict[str, Any]:
    """`($name: Type = default @directive ...)`: each declared name and its default."""
    r.expect("(")
    out: dict[str, Any] = {}
    while r.peek() != ")":
        r.expect("$")
        name = r.name()
        if name in out:
            raise GraphQLSyntaxError(f"variable ${name} declared twice")
        r.expect(":")
        _type(r)
        default = _NO_DEFAULT
        if r.peek() == "=":
            r.next()
            default = r.value(const=True)
        r.directives()
        out[name] = default
    r.next()
    if not out:
        raise GraphQLSyntaxError("empty variable definitions")
    return out


def _type(r: _Reader) -> None:
    if r.peek() == "[":
        r.next()
        _type(r)
        r.expect("]")
    else:
        r.name()
    if r.peek() == "!":
        r.next()


def _require(r: _Reader, text: str) -> None:
    if r.peek() != text:
        raise GraphQLSyntaxError(f"expected {text!r}, found {r.peek()!r}")


def _top_level_fields(r: _Reader) -> tuple[Field, ...]:
    r.expect("{")
    fields = []
    while r.peek() != "}":
        if r.peek() == "...":
            raise GraphQLSyntaxError("a fragment at the top level of a mutation")
        name = r.name()
        if r.peek() == ":":
            r.next()
            name = r.name()
        arguments: dict[str, Any] = {}
        if r.peek() == "(":
            r.next()
            while r.peek() != ")":
                key = r.name()
                r.expect(":")
                if key in arguments:
                    raise GraphQLSyntaxError(f"argument {key!r} of {name} given twice")
                arguments[key] = r.value()
            r.next()
            if not arguments:
                raise GraphQLSyntaxError(f"empty arguments of {name}")
        r.directives()
        if r.peek() == "{":
            r.skip_balanced()
        fields.append(Field(name, arguments))
    r.expect("}")
    if not fields:
        raise GraphQLSyntaxError("an empty mutation")
    return tuple(fields)


def mutation_fields(document: str) -> list[str]:
    """Top-level field names (aliases resolved) of every mutation operation in document."""
    return [f.name for op in parse(document) for f in op.fields]


def resolve(value: Any, operation: Operation, variables: Mapping[str, Any]) -> Any:
    """value with every variable replaced by the request's value or its default.

    A variable the operation does not declare, or one with neither, cannot be read."""
    if isinstance(value, Variable):
        if value.name not in operation.variables:
            raise GraphQLSyntaxError(f"variable ${value.name} is not declared")
        if value.name in variables:
            return variables[value.name]
        if value.name in operation.defaults:
            return operation.defaults[value.name]
        raise GraphQLSyntaxError(f"variable ${value.name} has no value")
    if isinstance(value, dict):
        return {k: resolve(v, operation, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, operation, variables) for v in value]
    return value
