"""A policy shared by the mitm unit tests, and the proxy's addon chain as mitmproxy drives it."""

from __future__ import annotations

import copy
import json

P_ANTHROPIC = "bottle-placeholder-anthropic-api-key-5f1c0d9e8a7b6c4d"
P_GITHUB = "bottle-placeholder-github-token-0a1b2c3d4e5f6a7b"
P_EXAMPLE = "bottle-placeholder-example-bearer-99887766554433"
P_TOKEN = "bottle-placeholder-token-scheme-1122334455667788"
P_BASIC = "bottle-placeholder-basic-userpass-aabbccddeeff0011"

POLICY = {
    "version": 2,
    "bottle": "bottle-demo-3f9a2c",
    "mode": "enforce",
    "listen": {"host": "0.0.0.0", "port": 8080},
    "clients": ["172.20.0.3"],
    "allow": [
        {"id": "egress.allow[0]", "host": "api.anthropic.com", "methods": ["POST"], "paths": ["/v1/"],
         "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[1]", "host": "*.githubusercontent.com", "methods": ["GET"], "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[2]", "host": "github.com", "methods": None, "paths": ["/org/repo.git/"],
         "ports": [443], "private_upstream": False, "scan_body": False, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[3]", "host": "api.example.com", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[4]", "host": "api.token.test", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[5]", "host": "basic.test", "methods": None, "paths": None,
         "ports": [443], "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
        {"id": "egress.allow[6]", "host": "internal.test", "methods": None, "paths": None,
         "ports": [8443], "private_upstream": True, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"},
    ],
    "routes": [
        {"id": "egress.routes[0]", "host": "api.anthropic.com", "methods": None, "paths": None,
         "scheme": "header", "header": "x-api-key", "username": None,
         "token_ref": "ANTHROPIC_API_KEY"},
        {"id": "egress.routes[1]", "host": "github.com", "methods": None, "paths": None,
         "scheme": "basic", "header": None, "username": "x-access-token",
         "token_ref": "GITHUB_TOKEN"},
        {"id": "egress.routes[2]", "host": "api.example.com", "methods": None, "paths": None,
         "scheme": "bearer", "header": None, "username": None,
         "token_ref": "EXAMPLE_TOKEN"},
        {"id": "egress.routes[3]", "host": "api.token.test", "methods": None, "paths": None,
         "scheme": "token", "header": None, "username": None,
         "token_ref": "TOKEN_TEST"},
        {"id": "egress.routes[4]", "host": "basic.test", "methods": None, "paths": None,
         "scheme": "basic", "header": None, "username": None,
         "token_ref": "BASIC_PAIR"},
    ],
    "placeholders": {"ANTHROPIC_API_KEY": P_ANTHROPIC, "GITHUB_TOKEN": P_GITHUB, "EXAMPLE_TOKEN": P_EXAMPLE, "TOKEN_TEST": P_TOKEN, "BASIC_PAIR": P_BASIC},
    "scanner": {"url": "http://pipelock:9090/api/v1/scan", "token": "scan-token-0123456789abcdef",
                "mode": "block", "timeout_seconds": 10, "max_body_bytes": 1000, "responses": "warn"},
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
    if "routes" in changes and "placeholders" not in changes:
        refs = {r["token_ref"] for r in data["routes"] if isinstance(r, dict)}
        data["placeholders"] = {k: v for k, v in data["placeholders"].items() if k in refs}
    return data


def policy_text(**changes) -> str:
    return json.dumps(policy_dict(**changes))


HOOKS = ("http_connect", "requestheaders", "bottle_request_streamed", "request", "responseheaders", "response",
         "error", "websocket_message", "server_connect")


class Chain:
    """The proxy's addons (bottle.mitm.addons) as mitmproxy drives them: each hook goes to
    every addon, in order."""

    def __init__(self, policy, scanner, env, emit):
        from bottle.mitm.addons import make_addons
        from bottle.mitm.state import Runtime

        self.runtime = Runtime(policy=policy, scanner=scanner, env=env, emit=emit)
        self.addons = make_addons(self.runtime)

    @property
    def policy(self):
        return self.runtime.policy

    @policy.setter
    def policy(self, value):
        self.runtime.policy = value

    @property
    def scanner(self):
        return self.runtime.scanner

    @scanner.setter
    def scanner(self, value):
        self.runtime.scanner = value

    def __getattr__(self, hook):
        if hook not in HOOKS:
            raise AttributeError(hook)

        async def call(subject):
            for addon in self.addons:
                if (fn := getattr(addon, hook, None)) is not None:
                    await fn(subject)

        return call
