"""pipelock configuration for scan-only use behind bottle's proxy.

Rendered as JSON text: JSON is valid YAML, so no YAML library is needed.
"""

from __future__ import annotations

import json


def render_pipelock_config(*, scan_listen: str, main_listen: str, token: str, max_body_bytes: int) -> str:
    # The dlp text is the body's strings plus header values, so leave headroom.
    field_limit = max(max_body_bytes, 16384) + 1024 * 1024
    config = {
        "version": 1,
        "mode": "balanced",
        "enforce": True,
        # pipelock always runs its fetch proxy; bottle never sends traffic through it.
        "fetch_proxy": {
            "listen": main_listen,
            "monitoring": {"max_url_length": 8192, "max_requests_per_minute": 1_000_000_000},
        },
        "forward_proxy": {"enabled": False},
        "dlp": {"scan_env": False, "include_defaults": True},
        # Empty: no DNS-based SSRF lookups in pipelock; bottle checks upstream IPs itself.
        "internal": [],
        "logging": {"format": "json", "output": "stdout", "include_allowed": False, "include_blocked": True},
        "sentry": {"enabled": False},
        "scan_api": {
            "listen": scan_listen,
            "auth": {"bearer_tokens": [token]},
            "rate_limit": {"requests_per_minute": 600000, "burst": 10000},
            # JSON escaping can grow text up to 6x; leave room for the envelope.
            "max_body_bytes": field_limit * 6 + 65536,
            "field_limits": {"url": 16384, "text": field_limit, "content": field_limit, "arguments": field_limit},
            # write must be >= scan, or a slow scan's answer is cut off.
            "timeouts": {"read": "10s", "write": "30s", "scan": "20s"},
            "connection_limit": 256,
            "kinds": {"url": True, "dlp": True, "prompt_injection": True, "tool_call": False},
        },
    }
    return json.dumps(config, indent=2) + "\n"
