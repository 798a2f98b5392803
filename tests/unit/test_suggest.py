"""`bottle policy suggest` on recorded logs: generalised paths, the same bytes for the same
logs, output `bottle validate` and `bottle schema` accept, and a merge that keeps the user's
manifest as written."""

from __future__ import annotations

import difflib
import json
import random
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from bottle.cli import cli
from bottle.egresslog import parse_line
from bottle.manifest import json_schema, load_manifest
from bottle.manifest_edit import guess_indent, render_manifest
from bottle.mitm.logformat import log_line
from bottle.suggest import collapse, generalize, suggest_policy

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(__file__).parent / "logs"
GOLDEN = Path(__file__).parent / "golden" / "suggest-discover.yaml"


def entries(*lines: dict):
    base = dict(time="2026-11-22T03:26:18.123Z", bottle="bottle-demo-3f9a2c", client="172.20.0.3", method="GET",
                scheme="https", port=443, status=200, decision="would_block")
    return [parse_line(json.dumps(log_line(**{**base, **line})), Path("t.jsonl"), i + 1)
            for i, line in enumerate(lines)]


def suggest(*args: str, env=None):
    return CliRunner().invoke(cli, ["policy", "suggest", *args], env=env)


@pytest.mark.parametrize("path, prefix", [
    ("/v1/messages", "/v1/messages"),
    ("/v1/messages/count_tokens", "/v1/messages/"),
    ("/v1/messages?beta=REDACTED", "/v1/messages"),
    ("/repos/acme/widgets/pulls/12", "/repos/acme/"),
    ("/pkg/requests/2.31.0/requests-2.31.0.tar.gz", "/pkg/requests/"),
    ("/download/requests-2.31.0.tar.gz", "/download/"),
    ("/objects/3f9a2c1d0e7b/blob", "/objects/"),
    ("/u/550e8400-e29b-41d4-a716-446655440000/x", "/u/"),
    ("/t/AbCdEf0123456789xyzABCDE/x", "/t/"),
    ("/v2/", "/v2/"),
    ("/12345/file", "/"),
    ("/", "/"),
])
def test_paths_are_cut_at_ids_hashes_and_versions(path, prefix):
    assert generalize(path) == prefix


def test_prefixes_fold_into_their_parent_when_many_and_span_the_host_only_when_many_at_the_top():
    assert collapse(["/v1/messages", "/v1/messages/", "/api/claude_code/"]) == ("/api/claude_code/", "/v1/messages")
    assert collapse([f"/pkg/{name}/" for name in "abcde"] + ["/v1/x"]) == ("/pkg/", "/v1/x")
    assert collapse([f"/pkg/{name}/" for name in "abcd"]) == tuple(f"/pkg/{name}/" for name in "abcd")
    assert collapse([f"/{name}" for name in "abcde"]) is None
    assert collapse(["/"]) is None


def test_the_suggestion_from_a_recorded_discover_log_is_pinned(tmp_path):
    result = suggest(str(LOGS / "discover.jsonl"))
    assert result.exit_code == 0, result.output
    assert result.stdout == GOLDEN.read_text()


def test_the_same_logs_give_the_same_bytes_in_any_order(tmp_path):
    lines = (LOGS / "discover.jsonl").read_text().splitlines() + (LOGS / "enforce.jsonl").read_text().splitlines()
    random.Random(7).shuffle(lines)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(lines[:9]) + "\n")
    second.write_text("\n".join(lines[9:]) + "\n")
    together = suggest(str(LOGS / "discover.jsonl"), str(LOGS / "enforce.jsonl")).stdout
    assert suggest(str(second), str(first)).stdout == together
    assert suggest(str(LOGS / "enforce.jsonl"), str(LOGS / "discover.jsonl")).stdout == together


def test_the_suggestion_is_a_manifest_the_schema_and_bottle_validate_accept(tmp_path):
    text = suggest(str(LOGS / "discover.jsonl")).stdout
    jsonschema.validate(yaml.safe_load(text), json_schema())
    path = tmp_path / "suggested.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.output == (f"{path}: valid (bottle 'flow', 3 allow rules, 1 credential route, "
                             "egress mode enforce)\n")


def test_telemetry_and_unknown_third_parties_are_listed_but_commented_out():
    s = suggest_policy(entries(
        dict(host="api.example.com", path="/v1/x", token_ref="API_KEY", decision="allow"),
        dict(host="uploads.example.com", path="/v1/put"),  # a sibling of a first party
        dict(host="statsig.example.com", path="/v1/rgstr"),
        dict(host="api.example.com", path="/api/event_logging/batch", method="POST"),
        dict(host="cdn.elsewhere.test", path="/lib.js"),
    ))
    shown = {(r.host, r.paths): r.doubt for r in s.rules}
    assert shown == {("api.example.com", ("/v1/x",)): "", ("uploads.example.com", ("/v1/put",)): "",
                     ("statsig.example.com", ("/v1/rgstr",)): "telemetry?",
                     ("api.example.com", ("/api/event_logging/",)): "telemetry?",
                     ("cdn.elsewhere.test", ("/lib.js",)): "unknown third party"}
    text = render_manifest(s)
    assert "    # telemetry?: 1 request, e.g. GET /v1/rgstr\n    # - host: statsig.example.com\n" in text
    assert "\n    - host: cdn.elsewhere.test" not in text


def test_bodies_go_unscanned_only_where_the_scanner_refused_them_as_binary():
    binary = dict(host="api.example.com", method="PUT", path="/blobs/1", status=415, decision="block",
                  reason="binary application/octet-stream body cannot be scanned", token_ref=None)
    push = dict(host="api.example.com", method="POST", path="/o/r.git/git-receive-pack", status=415, decision="block",
                reason="binary application/x-git-receive-pack-request body cannot be scanned")
    s = suggest_policy(entries(dict(host="api.example.com", path="/v1/x", token_ref="K", decision="allow"),
                               binary, push))
    assert {(r.methods, r.scan_body) for r in s.rules} == {(("GET",), True), (("PUT",), False), (("POST",), True)}
    assert "      scan_body: false\n" in render_manifest(s)


def test_a_placeholder_refused_outside_its_route_extends_the_route_on_its_own_host_only():
    refused = "credential placeholder for API_KEY sent outside its route egress.routes[0]"
    s = suggest_policy(entries(
        dict(host="api.example.com", path="/v1/messages", token_ref="API_KEY", decision="allow",
             placeholders={"API_KEY": ["x-api-key"]}),
        dict(host="api.example.com", path="/api/settings", decision="block", status=403, rule="egress.routes[0]",
             reason=refused, placeholders={"API_KEY": ["x-api-key"]}),
        dict(host="evil.example.net", path="/x", decision="block", status=403, rule="egress.routes[0]",
             reason=refused, placeholders={"API_KEY": ["x-api-key"]}),
    ))
    (route,) = s.routes
    assert (route.host, route.paths, route.scheme, route.header) == (
        "api.example.com", ("/api/settings", "/v1/messages"), "header", "x-api-key")
    assert s.notes == ("evil.example.net: API_KEY's placeholder, sent here instead of to its route's host",)


def test_git_traffic_becomes_repositories_with_the_access_seen():
    s = suggest_policy(entries(
        dict(host="GitHub.com", path="/Acme/Widgets.git/info/refs?service=git-upload-pack"),
        dict(host="github.com", path="/acme/tools/info/refs?service=git-receive-pack"),
    ))
    assert [(r.repo, r.access) for r in s.repositories] == [("github.com/acme/tools", "push"),
                                                          ("github.com/acme/widgets", "read")]
    assert {r.host for r in s.rules} == {"github.com"}


def test_a_tls_passthrough_tunnel_is_suggested_as_one():
    s = suggest_policy(entries(dict(host="pinned.example.com", method="CONNECT", path="", decision="allow",
                                    rule="egress.allow[3]", token_ref=None),
                               dict(host="api.example.com", path="/x", token_ref="K", decision="allow")))
    (rule,) = [r for r in s.rules if r.host == "pinned.example.com"]
    assert (rule.tls, rule.methods, rule.paths, rule.active) == ("passthrough", None, None, True)
    assert "    - host: pinned.example.com\n      tls: passthrough\n      ports: [443]\n" in render_manifest(s)


MANIFEST = """\
# yaml-language-server: $schema=bottle.schema.json
version: 1
name: 'flow'   # quoted on purpose

egress:
  mode: enforce   # discover while exploring
  allow:   # what may leave
    # The model API.
    - host: api.anthropic.com
      methods: [POST]
      paths: ["/v1/"]
      private_upstream: true
  routes:
    - host: api.anthropic.com
      paths: [/v1/]
      auth:
        scheme: header
        header: x-api-key
        token_ref: BOTTLE_TEST_API_KEY

scanner:
  mode: block
"""


def test_merging_keeps_every_comment_quote_and_order_and_only_adds(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(MANIFEST)
    result = suggest(str(LOGS / "discover.jsonl"), "--manifest", str(path), "--write")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"{path}: merged; review the change (e.g. git diff {path})\n"
    merged = path.read_text()
    changes = [(op, MANIFEST.splitlines()[i1:i2]) for op, i1, i2, _, _ in
               difflib.SequenceMatcher(a=MANIFEST.splitlines(), b=merged.splitlines(), autojunk=False).get_opcodes()
               if op != "equal"]
    assert [op for op, _ in changes if op != "insert"] == ["replace"]
    assert [old for op, old in changes if op == "replace"] == [["      paths: [/v1/]"]]
    assert ("      paths: [/v1/, /api/claude_code/]  # suggested: + /api/claude_code/ (2 requests carried "
            "BOTTLE_TEST_API_KEY's placeholder, e.g. GET /api/claude_code/policy_limits; refused outside this route "
            "until now)\n") in merged
    loaded = load_manifest(path)
    assert [r["host"] for r in loaded.data["egress"]["allow"]] == [
        "api.anthropic.com", "api.anthropic.com", "github.com"]
    assert loaded.data["git"]["repositories"] == [{"repo": "github.com/acme/widgets", "access": "push"}]


def test_merging_twice_adds_nothing_the_second_time(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(MANIFEST)
    suggest(str(LOGS / "discover.jsonl"), "--manifest", str(path), "--write")
    once = path.read_text()
    again = suggest(str(LOGS / "discover.jsonl"), "--manifest", str(path), "--write")
    assert again.exit_code == 0
    assert again.stderr == f"{path}: nothing to add; the manifest already allows this traffic\n"
    assert path.read_text() == once


def test_without_write_the_merged_manifest_is_printed_and_the_file_left_alone(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(MANIFEST)
    result = suggest(str(LOGS / "discover.jsonl"), "--manifest", str(path))
    assert result.stdout.startswith(MANIFEST.splitlines()[0])
    assert path.read_text() == MANIFEST
    assert suggest(str(LOGS / "discover.jsonl"), "--write").exit_code == 2


def test_the_example_manifest_round_trips_unchanged_when_nothing_is_new(tmp_path):
    example = (ROOT / "examples" / "claude.yaml").read_text()
    assert guess_indent(example) == (2, 4, 2)
    path = tmp_path / "claude.yaml"
    path.write_text(example)
    log = tmp_path / "none.jsonl"
    log.write_text("")
    assert suggest(str(log), "--manifest", str(path)).stdout == example


def test_a_route_that_names_its_methods_gets_the_method_it_refused(tmp_path):
    path = tmp_path / "bottle.yaml"
    path.write_text(MANIFEST.replace("      paths: [/v1/]\n      auth:", "      methods: [POST]\n      auth:"))
    merged = suggest(str(LOGS / "discover.jsonl"), "--manifest", str(path)).stdout
    assert ("      methods: [POST, GET]  # suggested: + GET (2 requests carried BOTTLE_TEST_API_KEY's placeholder, "
            "e.g. GET /api/claude_code/policy_limits; refused outside this route until now)\n") in merged
