"""Malformed manifests never produce a traceback: only ManifestError with a message."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle.errors import ManifestError
from bottle.manifest import json_schema, parse_manifest

KEYS = ["version", "name", "agent", "egress", "scanner", "docker", "allow", "routes", "auth", "scheme",
        "token_ref", "header", "host", "methods", "paths", "ports", "mode", "image", "command", "env",
        "resources", "memory", "cpus", "pids", "user", "workdir", "workspace", "upstream_ca",
        "private_upstream", "scan_body", "tls", "username", "egress_network", "alow", "x"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["api.example.com", "*.example.com", "bearer", "header", "GET", "/v1/", "1000:1000", "passthrough",
                     "enforce", "discover", "block", "audit", "4g", "demo", "ANTHROPIC_API_KEY", "x-api-key", ""]),
    st.text(max_size=20),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=6)),
    max_leaves=30,
)
SCHEMA = json_schema()
PATH = Path("fuzz.yaml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_garbage_is_a_manifest_error_or_valid(document):
    if isinstance(document, dict) and "version" in document:
        document = {**document}
    text = yaml.safe_dump(document)
    try:
        manifest = parse_manifest(text, PATH)
    except ManifestError as e:
        assert e.message.startswith("fuzz.yaml") or "problems in fuzz.yaml" in e.message
    else:
        # Whatever the validator accepts, the published JSON Schema accepts too.
        jsonschema.validate(json.loads(json.dumps(yaml.safe_load(text))), SCHEMA)
        assert manifest.data["version"] == 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_manifest_error_or_valid(text):
    try:
        parse_manifest(text, PATH)
    except ManifestError as e:
        assert e.message


EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "claude.yaml").read_text())


def _paths(node, at=()):
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*at, i))


EXAMPLE_PATHS = list(_paths(EXAMPLE))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLE_PATHS), documents, st.booleans())
def test_mutated_example_is_a_manifest_error_or_valid(path, replacement, delete):
    document = json.loads(json.dumps(EXAMPLE))
    if not path:
        document = replacement
    else:
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    try:
        parse_manifest(yaml.safe_dump(document), PATH)
    except ManifestError as e:
        assert e.message
    else:
        jsonschema.validate(json.loads(json.dumps(document)), SCHEMA)
