"""A small schema language for the manifest: one description, two uses.

`validate()` checks a loaded document and reports every problem with its key path, and
`to_json_schema()` turns the same description into the JSON Schema that `bottle schema`
prints for editors. Keeping both in one place means the schema editors see can never
drift from what `bottle validate` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

Path = tuple[str | int, ...]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclasses.dataclass(frozen=True)
class Problem:
    path: Path
    expected: str
    found: str | None = None
    hint: str | None = None


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def describe(value: Any) -> str:
    """How a found value is shown in an error: its YAML type and a short repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Type:
    description: str = dataclasses.field(default="", kw_only=True)

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _with_description(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            schema["description"] = self.description
        return schema


@dataclasses.dataclass(frozen=True)
class Str(Type):
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    expected: str = "a string"
    max_length: int = 4096
    normalize: Callable[[str], str] | None = None

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if not isinstance(value, str):
            problems.append(Problem(path, self._expected(), describe(value)))
            return MISSING
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            problems.append(Problem(path, self._expected(), describe(value), hint))
            return MISSING
        if len(value) > self.max_length or (
            self.pattern is not None and not re.fullmatch(self.pattern, value)
        ):
            problems.append(Problem(path, self._expected(), describe(value)))
            return MISSING
        return self.normalize(value) if self.normalize else value

    def _expected(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        return self.expected

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.choices is not None:
            schema = {"enum": list(self.choices)}
        elif self.pattern is not None:
            schema["pattern"] = f"^(?:{self.pattern})$"
        return self._with_description(schema)


@dataclasses.dataclass(frozen=True)
class Int(Type):
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
        ):
            problems.append(Problem(path, self._expected(), describe(value)))
            return MISSING
        return value

    def _expected(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"an integer of at least {self.minimum}"
        return "an integer"

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._with_description(schema)


@dataclasses.dataclass(frozen=True)
class Num(Type):
    exclusive_minimum: float = 0
    maximum: float = 1024

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (self.exclusive_minimum < value <= self.maximum)
        ):
            expected = f"a number greater than {self.exclusive_minimum:g} and at most {self.maximum:g}"
            problems.append(Problem(path, expected, describe(value)))
            return MISSING
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._with_description(
            {"type": "number", "exclusiveMinimum": self.exclusive_minimum, "maximum": self.maximum}
        )


@dataclasses.dataclass(frozen=True)
class Bool(Type):
    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if not isinstance(value, bool):
            problems.append(Problem(path, "true or false", describe(value)))
            return MISSING
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._with_description({"type": "boolean"})


@dataclasses.dataclass(frozen=True)
class OneOf(Type):
    """The first alternative whose check produces no problem wins."""

    alternatives: tuple[Type, ...] = ()
    expected: str = ""

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        # A mapping can only be the mapping alternative: its own problems (an unknown key
        # with "did you mean") say more than "expected one of these".
        mapping = next((a for a in self.alternatives if isinstance(a, Obj)), None)
        if isinstance(value, dict) and mapping is not None:
            return mapping.check(value, path, problems)
        for alternative in self.alternatives:
            attempt: list[Problem] = []
            result = alternative.check(value, path, attempt)
            if not attempt:
                return result
        problems.append(Problem(path, self.expected, describe(value)))
        return MISSING

    def json_schema(self) -> dict[str, Any]:
        return self._with_description({"anyOf": [a.json_schema() for a in self.alternatives]})


@dataclasses.dataclass(frozen=True)
class ListOf(Type):
    item: Type = dataclasses.field(default_factory=Str)
    min_items: int = 0
    max_items: int = 1000
    unique: bool = False

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if not isinstance(value, list):
            problems.append(Problem(path, f"a list of {self._item_name()}", describe(value)))
            return MISSING
        if not (self.min_items <= len(value) <= self.max_items):
            expected = (
                f"a list of at least {self.min_items} item{'s' if self.min_items != 1 else ''}"
                if len(value) < self.min_items
                else f"a list of at most {self.max_items} items"
            )
            problems.append(Problem(path, expected, describe(value)))
            return MISSING
        out = [self.item.check(item, (*path, i), problems) for i, item in enumerate(value)]
        if self.unique:
            seen: set[Any] = set()
            for i, item in enumerate(out):
                if item is not MISSING and item in seen:
                    problems.append(Problem((*path, i), "no duplicates", f"{describe(item)} again"))
                seen.add(item)
        return out

    def _item_name(self) -> str:
        return {Str: "strings", Int: "integers", Obj: "mappings"}.get(type(self.item), "items")

    def json_schema(self) -> dict[str, Any]:
        schema = {
            "type": "array",
            "items": self.item.json_schema(),
            "minItems": self.min_items,
            "maxItems": self.max_items,
        }
        if self.unique:
            schema["uniqueItems"] = True
        return self._with_description(schema)


@dataclasses.dataclass(frozen=True)
class MapOf(Type):
    key: Str = dataclasses.field(default_factory=Str)
    value: Type = dataclasses.field(default_factory=Str)

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if not isinstance(value, dict):
            problems.append(Problem(path, "a mapping", describe(value)))
            return MISSING
        out = {}
        for k, v in value.items():
            key_problems: list[Problem] = []
            checked_key = self.key.check(k, (*path, str(k)), key_problems)
            if key_problems:
                problems.append(
                    Problem((*path, str(k)), f"a key that is {self.key.expected}", describe(k))
                )
                continue
            out[checked_key] = self.value.check(v, (*path, str(k)), problems)
        return out

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": self.value.json_schema(),
        }
        if self.key.pattern:
            schema["propertyNames"] = {"pattern": f"^(?:{self.key.pattern})$"}
        return self._with_description(schema)


@dataclasses.dataclass(frozen=True)
class Field:
    type: Type
    required: bool = False
    default: Any = MISSING


@dataclasses.dataclass(frozen=True)
class Obj(Type):
    fields: Mapping[str, Field] = dataclasses.field(default_factory=dict)

    def check(self, value: Any, path: Path, problems: list[Problem]) -> Any:
        if not isinstance(value, dict):
            problems.append(Problem(path, self._expected(), describe(value)))
            return MISSING
        out: dict[str, Any] = {}
        for key in value:
            if not isinstance(key, str) or key not in self.fields:
                close = difflib.get_close_matches(str(key), list(self.fields), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else None
                problems.append(
                    Problem(
                        (*path, str(key)),
                        "one of the keys " + ", ".join(self.fields),
                        f"unknown key {str(key)!r}",
                        hint,
                    )
                )
        for name, field in self.fields.items():
            if name in value:
                out[name] = field.type.check(value[name], (*path, name), problems)
            elif field.required:
                problems.append(Problem((*path, name), f"a value ({self._field_expected(field)})", "nothing"))
            elif field.default is not MISSING:
                default = field.default() if callable(field.default) else field.default
                # A missing section still gets its own fields' defaults.
                out[name] = field.type.check(default, (*path, name), problems) if isinstance(field.type, Obj) else default
        return out

    def _expected(self) -> str:
        return "a mapping with the keys " + ", ".join(self.fields)

    @staticmethod
    def _field_expected(field: Field) -> str:
        t = field.type
        if isinstance(t, Obj):
            return "a mapping"
        if isinstance(t, Str):
            return t._expected()
        if isinstance(t, Int):
            return t._expected()
        if isinstance(t, ListOf):
            return "a list"
        return "see `bottle schema`"

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: f.type.json_schema() for name, f in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            schema["required"] = required
        for name, f in self.fields.items():
            if f.default is not MISSING and not callable(f.default):
                schema["properties"][name]["default"] = f.default
        return self._with_description(schema)
