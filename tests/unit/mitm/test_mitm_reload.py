"""A live reload on the proxy side: the update merged into the served policy, validated by
the proxy's own parser, written atomically, and put back when the launcher refuses it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat

import pytest

from bottle.mitm import receive
from bottle.mitm.policy import parse_policy
from bottle.mitm.reload import REDACTED, UpdateError, merge_update, public_view
from mitm_fixture import P_ANTHROPIC, POLICY, policy_dict

NEW_RULE = {"id": "egress.allow[7]", "host": "new.example.org", "methods": ["GET"], "paths": ["/v1/"], "ports": [443],
            "private_upstream": False, "scan_body": True, "max_label_entropy": 3.5, "tls": "intercept"}


def test_merge_replaces_only_the_reloadable_parts_and_keeps_the_secrets():
    update = {"mode": "discover", "allow": [*POLICY["allow"], NEW_RULE], "scanner": {"mode": "audit"}}
    merged = merge_update(POLICY, update)
    assert merged["allow"][-1]["host"] == "new.example.org"
    assert merged["mode"] == "discover"
    assert merged["scanner"]["mode"] == "audit"
    assert merged["scanner"]["token"] == POLICY["scanner"]["token"]
    assert merged["placeholders"] == POLICY["placeholders"]
    assert (merged["listen"], merged["clients"], merged["dns"]) == (POLICY["listen"], POLICY["clients"], POLICY["dns"])
    parse_policy(json.dumps(merged))
    assert POLICY["mode"] == "enforce"  # the input is not changed


@pytest.mark.parametrize("update, message", [
    ({"placeholders": {}}, "cannot change placeholders on a reload"),
    ({"listen": {"host": "0.0.0.0", "port": 1}}, "cannot change listen"),
    ({"scanner": {"token": "x" * 20}}, "scanner: cannot change token"),
    ([], "must be a JSON object"),
])
def test_an_update_may_not_touch_what_is_fixed_or_secret(update, message):
    with pytest.raises(UpdateError, match=message):
        merge_update(POLICY, update)


def test_the_public_view_has_the_token_refs_but_no_secret_value():
    view = public_view(POLICY)
    text = json.dumps(view)
    assert view["placeholders"] == sorted(POLICY["placeholders"])
    assert view["scanner"]["token"] == REDACTED
    assert P_ANTHROPIC not in text and POLICY["scanner"]["token"] not in text


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A proxy run directory with a served policy, and a launcher stand-in that answers a
    SIGHUP the way the launcher does: serving the new file if it parses and keeps the
    fixed parts, else an error while the old policy keeps being served."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY, indent=2) + "\n")
    path.chmod(0o600)
    served = {"sha": hashlib.sha256(path.read_bytes()).hexdigest(), "hups": 0}

    def launcher(root):
        served["hups"] += 1
        raw = (root / "policy.json").read_bytes()
        try:
            policy = parse_policy(raw.decode())
            if policy.listen.port != POLICY["listen"]["port"] or served.get("refuse"):
                raise ValueError("listen cannot change")
            served["sha"] = hashlib.sha256(raw).hexdigest()
            status = {"state": "serving", "policy_sha256": served["sha"], "error": None}
        except ValueError as e:
            status = {"state": "error", "policy_sha256": served["sha"], "error": str(e)}
        (root / "status.json").write_text(json.dumps(status))
        return True

    monkeypatch.setattr(receive, "signal_launcher", launcher)
    return tmp_path, served


def _reload(root, update):
    return receive.reload(root, json.dumps(update).encode(), 2.0, root / "waiting" / str(os.getpid()))


def test_a_reload_is_written_atomically_with_the_same_mode_and_served(run_dir):
    root, served = run_dir
    result = _reload(root, {"allow": [*POLICY["allow"], NEW_RULE]})
    data = (root / "policy.json").read_bytes()
    assert result == {"changed": True, "policy_sha256": hashlib.sha256(data).hexdigest(),
                      "previous_sha256": result["previous_sha256"]}
    assert served["sha"] == result["policy_sha256"]
    assert json.loads(data)["allow"][-1]["host"] == "new.example.org"
    assert json.loads(data)["placeholders"] == POLICY["placeholders"]
    assert stat.S_IMODE((root / "policy.json").stat().st_mode) == 0o600
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_an_invalid_update_never_reaches_the_disk_or_the_launcher(run_dir):
    root, served = run_dir
    before = (root / "policy.json").read_bytes()
    broken = dict(NEW_RULE, host="not a host!")
    with pytest.raises(receive.ReceiveError, match=r"the new policy is not valid: allow\[7\]\.host"):
        _reload(root, {"allow": [*POLICY["allow"], broken]})
    # A route naming a credential the proxy has no placeholder for is refused the same way.
    route = dict(POLICY["routes"][0], token_ref="NEW_SECRET")
    with pytest.raises(receive.ReceiveError, match="placeholders"):
        _reload(root, {"routes": [*POLICY["routes"], route]})
    assert (root / "policy.json").read_bytes() == before
    assert served["hups"] == 0


def test_a_policy_the_launcher_refuses_is_taken_back_off_the_disk(run_dir):
    root, served = run_dir
    before = (root / "policy.json").read_bytes()
    served["refuse"] = True
    with pytest.raises(receive.ReceiveError, match="proxy reported an error: listen cannot change"):
        _reload(root, {"mode": "discover"})
    assert (root / "policy.json").read_bytes() == before
    assert served["hups"] == 1


def test_an_update_that_changes_nothing_is_not_sent(run_dir):
    root, served = run_dir
    (root / "policy.json").write_text(json.dumps(policy_dict(), indent=2) + "\n")
    result = _reload(root, {"mode": POLICY["mode"], "allow": POLICY["allow"]})
    assert result["changed"] is False and served["hups"] == 0


def test_show_prints_the_policy_without_secrets(run_dir, capsys):
    root, _ = run_dir
    assert receive.main(["--dir", str(root), "--show"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["sha256"] == hashlib.sha256((root / "policy.json").read_bytes()).hexdigest()
    assert shown["upstream_ca_sha256"] is None
    assert P_ANTHROPIC not in out and POLICY["scanner"]["token"] not in out


def test_the_reload_command_reports_a_refusal_on_stderr(run_dir, capsys, monkeypatch):
    root, _ = run_dir
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"listen": {}}')))
    assert receive.main(["--dir", str(root), "--reload", "--timeout", "2"]) == 1
    assert "reload refused, the previous policy stays: cannot change listen" in capsys.readouterr().err
