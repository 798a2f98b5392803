"""A policy shared by the mitm unit tests (imported by path-insensitive helpers)."""

from __future__ import annotations

import copy
import json

P_ANTHROPIC = "bottle-placeholder-anthropic-api-key-5f1c0d9e8a7b6c4d"
P_GITHUB = "bottle-placeholder-github-token-0a1b2c3d4e5f6a7b"
P_EXAMPLE = "bottle-placeholder-example-bearer-99887766554433"
P_TOKEN = "bottle-placeholder-token-scheme-1122334455667788"
P_BASIC = "bottle-placeholder-basic-userpass-aabbccddeeff0011"

POLICY = {
    "version": 1,
    "bottle": "bottle-demo-3f9a2c",
    "mode": "enforce",
    "listen": {"host": "0.0.0.0", "port": 8080},
    "clients": ["172.20.0.3"],
    "rules": [
        {"id": "egress.allow[0]", "host": "api.anthropic.com", "methods": ["POST"], "paths": ["/v1/"],
         "ports": [443], "private_upstream": False, "scan_body": True},
        {"id": "egress.allow[1]", "host": "*.githubusercontent.com", "methods": ["GET"], "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True},
        {"id": "egress.allow[2]", "host": "github.com", "methods": None, "paths": ["/org/repo.git/"],
         "ports": [443], "private_upstream": False, "scan_body": False},
        {"id": "egress.allow[3]", "host": "api.example.com", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True},
        {"id": "egress.allow[4]", "host": "api.token.test", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True},
        {"id": "egress.allow[5]", "host": "basic.test", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True},
        {"id": "egress.allow[6]", "host": "internal.test", "methods": None, "paths": None,
         "ports": [8443], "private_upstream": True, "scan_body": True},
    ],
    "routes": [
        {"id": "egress.routes[0]", "host": "api.anthropic.com", "methods": None, "paths": None,
         "scheme": "header", "header": "x-api-key", "username": None,
         "token_ref": "ANTHROPIC_API_KEY", "placeholder": P_ANTHROPIC},
        {"id": "egress.routes[1]", "host": "github.com", "methods": None, "paths": None,
         "scheme": "basic", "header": None, "username": "x-access-token",
         "token_ref": "GITHUB_TOKEN", "placeholder": P_GITHUB},
        {"id": "egress.routes[2]", "host": "api.example.com", "methods": None, "paths": None,
         "scheme": "bearer", "header": None, "username": None,
         "token_ref": "EXAMPLE_TOKEN", "placeholder": P_EXAMPLE},
        {"id": "egress.routes[3]", "host": "api.token.test", "methods": None, "paths": None,
         "scheme": "token", "header": None, "username": None,
         "token_ref": "TOKEN_TEST", "placeholder": P_TOKEN},
        {"id": "egress.routes[4]", "host": "basic.test", "methods": None, "paths": None,
         "scheme": "basic", "header": None, "username": None,
         "token_ref": "BASIC_PAIR", "placeholder": P_BASIC},
    ],
    "scanner": {"url": "http://pipelock:9090/api/v1/scan", "token": "scan-token-0123456789abcdef",
                "mode": "block", "timeout_seconds": 10, "max_body_bytes": 1000},
    "upstream_ca": None,
    "dns": {"host": "172.20.0.2", "port": 53},
}

ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-real-value",
    "GITHUB_TOKEN": "ghp_realvalue",
    "EXAMPLE_TOKEN": "example-real",
    "TOKEN_TEST": "token-real",
    "BASIC_PAIR": "alice:s3cret",
}


def policy_dict(**changes) -> dict:
    data = copy.deepcopy(POLICY)
    data.update(changes)
    return data


def policy_text(**changes) -> str:
    return json.dumps(policy_dict(**changes))
