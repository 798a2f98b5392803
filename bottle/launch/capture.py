"""What transparent capture installs in the agent's network namespace, as text and argv
(docs/prds/0009-transparent-capture.md). Pure: the Docker plan runs these in a short-lived
helper (root, NET_ADMIN only, in the agent's namespace) before the agent command, and the
dry-run prints them.

- A default route to the proxy, only so that a connection to any address can be opened;
  no packet leaves with a foreign address (the rules below rewrite or reject every one).
- An nftables table: TCP to a captured port goes to the proxy listener for that port (the
  proxy then goes by the TLS SNI or Host header, never by the address dialled); DNS to any
  server goes to the proxy's DNS; traffic to the proxy's own ports and replies pass; every
  other packet is rejected (TCP with a reset, the rest unreachable) at once, counted per
  destination in a set that teardown reads into the egress log.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any

from bottle.egresslog import CAPTURE_DROP
from bottle.mitm.policy import CapturedPort

TABLE = "bottle"
DROPPED_SET = "dropped"
DROP_REASON = "transparent capture: only TCP to captured ports and DNS leave the agent; this was rejected"


def route_argv(proxy_ip: str) -> list[str]:
    return ["ip", "route", "replace", "default", "via", proxy_ip]


def install_script(proxy_ip: str) -> str:
    """The helper's shell command; the ruleset comes on its standard input."""
    return f"set -eu; {' '.join(route_argv(proxy_ip))}; nft -f -"


def report_argv() -> list[str]:
    """Lists what the capture rejected (run by a helper at teardown)."""
    return ["nft", "--json", "list", "set", "inet", TABLE, DROPPED_SET]


def ruleset(ports: Sequence[CapturedPort], *, proxy_ip: str, proxy_port: int, dns_port: int) -> str:
    """The nftables ruleset, for `nft -f -`."""
    listeners = ", ".join(str(p) for p in sorted({dns_port, proxy_port, *(c.listen for c in ports)}))
    redirects = "\n".join(f"\t\ttcp dport {c.port} dnat ip to {proxy_ip}:{c.listen}" for c in ports)
    return f"""\
table inet {TABLE} {{
\tset {DROPPED_SET} {{
\t\ttype ipv4_addr . inet_proto . inet_service
\t\tsize 4096
\t\tflags dynamic
\t\tcounter
\t}}

\tchain capture {{
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local return
\t\tip daddr {proxy_ip} tcp dport {proxy_port} return
\t\tmeta l4proto {{ tcp, udp }} th dport {dns_port} dnat ip to {proxy_ip}:{dns_port}
{redirects}
\t}}

\tchain egress {{
\t\ttype filter hook output priority filter; policy drop;
\t\toif lo accept
\t\tct state established,related accept
\t\tip daddr {proxy_ip} tcp dport {{ {listeners} }} accept
\t\tip daddr {proxy_ip} udp dport {dns_port} accept
\t\tmeta l4proto {{ tcp, udp }} update @{DROPPED_SET} {{ ip daddr . meta l4proto . th dport }}
\t\tmeta l4proto != {{ tcp, udp }} update @{DROPPED_SET} {{ ip daddr . meta l4proto . 0 }}
\t\tmeta l4proto tcp reject with tcp reset
\t\tmeta l4proto udp reject
\t\tdrop
\t}}
}}
"""


@dataclasses.dataclass(frozen=True)
class Dropped:
    """What the capture rejected, per destination."""

    protocol: str
    address: str
    port: int | None
    packets: int


class ReportError(ValueError):
    pass


def parse_report(text: str) -> list[Dropped]:
    """The dropped set as `nft --json list set` prints it."""
    try:
        items = json.loads(text)["nftables"]
        sets = [item["set"] for item in items if "set" in item]
        elements = sets[0].get("elem", []) if sets else []
        found = []
        for element in elements:
            value = element["elem"] if "elem" in element else {"val": element}
            address, protocol, port = value["val"]["concat"]
            packets = int((value.get("counter") or {}).get("packets", 0))
            found.append(Dropped(protocol=str(protocol), address=str(address),
                                 port=int(port) if protocol in ("tcp", "udp") else None, packets=packets))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ReportError(f"unexpected nft output ({type(e).__name__}: {e})") from None
    return sorted(found, key=lambda d: (d.protocol, d.address, d.port or 0))


def drop_lines(dropped: Sequence[Dropped], *, bottle: str, client: str,
               now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """One egress log line per destination the capture rejected (docs/log-format.md)."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [{"time": stamp, "event": CAPTURE_DROP, "bottle": bottle, "client": client, "protocol": d.protocol,
             "address": d.address, "port": d.port, "packets": d.packets, "decision": "block", "reason": DROP_REASON}
            for d in dropped]
