"""What the log records for `bottle policy replay`: header names, where each placeholder was
(as the agent sent it), what the scanner saw, and git's service names, never a value."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from mitmproxy.test import taddons

from mitm_fixture import ENV, P_ANTHROPIC, P_BASIC, P_GITHUB
from test_mitm_addon import make_addon, make_flow, run


def test_a_routed_request_logs_where_the_placeholder_was_before_the_credential_replaced_it():
    addon, lines = make_addon()
    run(addon, make_flow(headers=[("x-api-key", P_ANTHROPIC), ("content-type", "application/json")], body=b"{}"))
    (line,) = lines
    assert line["headers"] == ["content-length", "content-type", "x-api-key"]
    assert line["placeholders"] == {"ANTHROPIC_API_KEY": ["x-api-key"]}
    assert line["log_format"] == 2 and line["scan"] == "full"
    text = json.dumps(line)
    assert P_ANTHROPIC not in text and ENV["ANTHROPIC_API_KEY"] not in text


def test_placeholders_in_the_url_inside_other_text_and_in_basic_form_are_told_apart():
    addon, lines = make_addon()
    basic = base64.b64encode(f"alice:{P_BASIC}".encode()).decode()
    run(addon, make_flow(url=f"https://basic.test/x?k={P_GITHUB}", method="GET",
                         headers=[("authorization", f"Basic {basic}"), ("x-note", f"see {P_ANTHROPIC} here")]))
    (line,) = lines
    assert line["placeholders"] == {"ANTHROPIC_API_KEY": ["x-note:partial"], "BASIC_PAIR": ["authorization"],
                                    "GITHUB_TOKEN": ["url"]}
    assert line["decision"] == "block" and line["path"] == "/x?k=REDACTED"
    assert P_GITHUB not in json.dumps(line)


def test_scan_records_what_the_scanner_saw():
    addon, lines = make_addon()
    run(addon, make_flow(headers=[("content-type", "text/plain")], body=b"hello"))
    run(addon, make_flow(url="https://evil.test/x"))
    f = make_flow(method="PUT", url="https://github.com/org/repo.git/x", body=b"\x00\x01")
    with taddons.context(addon):
        asyncio.run(addon.requestheaders(f))
        f.request.stream(b"\x00\x01")
    assert [line["scan"] for line in lines] == ["full", "none"]
    assert f.metadata["bottle"].scanned == "headers"  # scan_body: false streams the body unscanned


@pytest.mark.parametrize("path, shown", [
    ("/org/repo.git/info/refs?service=git-receive-pack", "/org/repo.git/info/refs?service=git-receive-pack"),
    ("/org/repo.git/info/refs?service=git-upload-pack&x=1", "/org/repo.git/info/refs?service=git-upload-pack&x=REDACTED"),
    ("/org/repo.git/info/refs?service=AKIAIOSFODNN7EXAMPLE", "/org/repo.git/info/refs?service=REDACTED"),
])
def test_git_service_names_stay_readable_and_every_other_query_value_is_redacted(path, shown):
    addon, lines = make_addon()
    run(addon, make_flow(method="GET", url=f"https://github.com{path}"))
    assert lines[0]["path"] == shown
