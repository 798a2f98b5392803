"""The proxy package's shape is part of its security argument: it holds only what runs in
the proxy image, every hook fails closed, and no addon or hook grows past reading size."""

from __future__ import annotations

import ast
import asyncio
import re
import sys
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from bottle.mitm import addons as addons_module
from bottle.mitm import state as state_module
from bottle.mitm.policy import parse_policy
from mitm_fixture import HOOKS, policy_text

PACKAGE = Path(addons_module.__file__).parent
REQUIREMENTS = PACKAGE.parents[1] / "requirements" / "egress-proxy.txt"
# Third-party packages the proxy image installs (requirements/egress-proxy.txt) that bottle/mitm uses.
IMAGE_PACKAGES = {"mitmproxy", "h11", "certifi", "brotli", "zstandard", "cryptography", "wsproto"}


def modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_the_proxy_package_imports_nothing_from_the_host_side(path):
    outside = set()
    for name in imported_names(path):
        top = name.split(".")[0]
        if name == "bottle.mitm" or name.startswith("bottle.mitm."):
            continue
        if top in sys.stdlib_module_names or top in IMAGE_PACKAGES:
            continue
        outside.add(name)
    assert outside == set(), f"{path.name} imports what the proxy image does not have"


def test_every_third_party_package_the_proxy_uses_is_pinned_for_its_image():
    pinned = {re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower()
              for line in REQUIREMENTS.read_text().splitlines() if line and line[0].isalpha()}
    assert IMAGE_PACKAGES <= pinned


def test_the_proxy_image_copies_only_the_proxy_package():
    dockerfile = (PACKAGE.parents[1] / "Dockerfile.egress-proxy").read_text()
    copies = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies == ["bottle/__init__.py", "bottle/mitm/"]


def _branches(function: ast.AST) -> int:
    count = 0
    for node in ast.walk(function):
        if isinstance(node, (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case)):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += len(node.ifs)
    return count


def _classes():
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                yield path, node


@pytest.mark.parametrize("path, cls", list(_classes()), ids=lambda v: v.name if isinstance(v, ast.ClassDef) else "")
def test_no_proxy_class_is_over_250_lines_and_no_hook_over_10_branches(path, cls):
    assert cls.end_lineno - cls.lineno + 1 <= 250, f"{path.name}:{cls.name} is too long"
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in HOOKS:
            assert _branches(item) <= 10, f"{path.name}:{cls.name}.{item.name} has {_branches(item)} branches"


def addon_hooks():
    runtime = state_module.Runtime(policy=parse_policy(policy_text()), scanner=None, env={}, emit=lambda line: None)
    for addon in addons_module.make_addons(runtime):
        for hook in HOOKS:
            if hasattr(addon, hook):
                yield addon, hook


ALL_HOOKS = list(addon_hooks())


def test_every_hook_goes_through_the_fail_closed_wrapper():
    assert ALL_HOOKS
    assert [f"{type(a).__name__}.{h}" for a, h in ALL_HOOKS if not getattr(getattr(a, h), "fail_closed", False)] == []


class _Broken(Exception):
    pass


def _flow_for(hook: str) -> http.HTTPFlow:
    f = tflow.tflow(ws=hook == "websocket_message", resp=hook in ("responseheaders", "response"))
    f.live = True
    if hook == "http_connect":
        f.request.method = "CONNECT"
    return f


class _ServerData:
    class server:  # noqa: N801 - mimics mitmproxy's ServerConnectionHookData.server
        address = ("api.anthropic.com", 443)
        error = None


@pytest.mark.parametrize("addon, hook", ALL_HOOKS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_an_exception_in_any_hook_of_any_addon_blocks_the_flow(addon, hook, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise _Broken("injected")

    # Every flow hook starts from the flow's state, and server_connect from the policy:
    # make both raise, so the real hook body fails wherever it first touches them.
    monkeypatch.setattr(state_module.FlowState, "of", classmethod(broken))
    monkeypatch.setattr(state_module.Runtime, "require_policy", broken)
    if hook == "server_connect":
        data = _ServerData()
        asyncio.run(getattr(addon, hook)(data))
        assert data.server.error == "bottle: internal error in bottle's server_connect check (_Broken)"
        return
    f = _flow_for(hook)
    if hook == "http_connect" and type(addon).__name__ == "RequestLog":
        f.response = http.Response.make(403)  # the log acts on refused CONNECTs only
    with taddons.context():
        asyncio.run(getattr(addon, hook)(f))
    if hook in ("http_connect", "requestheaders", "request"):
        assert f.response.status_code == 500
        assert f.response.headers["x-bottle-decision"] == "block"
    else:
        assert f.error is not None and f.error.msg == "Connection killed."
    if hook == "websocket_message":
        assert f.websocket.messages[-1].dropped
    assert f"bottle: {type(addon).__name__}.{hook} failed, blocking" in capsys.readouterr().err
