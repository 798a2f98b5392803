from __future__ import annotations

import json

from bottle.launch.pipelock_config import render_pipelock_config


def test_rendered_config_is_scan_only():
    config = json.loads(render_pipelock_config(
        scan_listen="0.0.0.0:9090", main_listen="127.0.0.1:8888", token="t" * 32, max_body_bytes=8388608))
    assert (config["version"], config["mode"]) == (1, "balanced")
    assert config["fetch_proxy"]["listen"] == "127.0.0.1:8888"
    assert config["fetch_proxy"]["monitoring"]["max_url_length"] == 8192
    assert config["forward_proxy"] == {"enabled": False}
    assert config["dlp"] == {"scan_env": False, "include_defaults": True}
    assert config["internal"] == []
    assert config["sentry"] == {"enabled": False}
    api = config["scan_api"]
    assert api["listen"] == "0.0.0.0:9090" and api["auth"] == {"bearer_tokens": ["t" * 32]}
    assert api["rate_limit"] == {"requests_per_minute": 600000, "burst": 10000}
    assert api["field_limits"]["text"] >= 8388608 and api["max_body_bytes"] > api["field_limits"]["text"]
    assert api["timeouts"] == {"read": "10s", "write": "30s", "scan": "20s"}
    assert api["kinds"] == {"url": True, "dlp": True, "prompt_injection": True, "tool_call": False}
