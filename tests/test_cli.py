"""The `mxd` command: init is idempotent, DKIM rotation keeps old mail verifiable, operator commands via the API."""
from __future__ import annotations

import json
import subprocess
import sys

from mxd.authn.dkim import verify
from mxd.resolver import StaticResolver
from tests.support.daemon import MxdProcess, start_daemon


def _mxd(proc: MxdProcess, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(proc.env, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "mxd.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_init_twice_keeps_keys_and_token(tmp_path):
    proc = MxdProcess(tmp_path / "data")
    first = proc.init()
    assert first["admin_token"].startswith("mxd_") and first["config_path"].endswith("mxd.toml")
    types = sorted(r["type"] for r in first["dns_records"])
    assert types == ["MX", "TXT", "TXT", "TXT", "TXT"]       # MX, SPF, DKIM RSA, DKIM Ed25519, DMARC
    key_files = {p.name: p.read_bytes() for p in (tmp_path / "data" / "dkim" / "example.test").glob("*.pem")}
    cert = (tmp_path / "data" / "tls" / "cert.pem").read_bytes()
    second = proc.init()
    assert second["admin_token"] is None and second["config_created"] is False
    assert second["dns_records"] == first["dns_records"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "dkim" / "example.test").glob("*.pem")} == key_files
    assert (tmp_path / "data" / "tls" / "cert.pem").read_bytes() == cert
    assert oct((tmp_path / "data" / "mxd.toml").stat().st_mode & 0o777) == "0o600"


def test_port_in_use_gives_one_line_with_the_fix(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = MxdProcess(tmp_path / "data", env={"MXD_MX_LISTEN": f"127.0.0.1:{port}"})
        out = _mxd(proc, "serve")
    assert out.returncode == 1
    [line] = [x for x in out.stderr.splitlines() if x.startswith("mxd:")]
    assert f"cannot listen on 127.0.0.1:{port} for the MX" in line and "MXD_MX_LISTEN" in line


def _selectors(raw: bytes) -> list[str]:
    import re
    return re.findall(rb"DKIM-Signature:[^:]*?\bs=([a-z0-9-]+)", raw.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" "))


def test_dkim_rotation_keeps_both_selectors_valid(tmp_path):
    proc = start_daemon(tmp_path / "data", mailboxes=["agent@example.test", "other@example.test"],
                        ready=["example.test"])
    try:
        def send(subject: str) -> bytes:
            r = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": "other@example.test",
                                                    "subject": subject, "text": "x"})
            assert r.status_code == 202, r.text
            return proc.api("GET", f"/api/messages/{r.json()['id']}/raw").content

        old_raw = send("before rotation")
        before = json.loads(_mxd(proc, "dkim", "list", "example.test", "--json").stdout)
        out = _mxd(proc, "dkim", "rotate", "example.test", "--json")
        assert out.returncode == 0, out.stderr
        after = json.loads(out.stdout)
        assert [k["state"] for k in after] == ["published", "published", "active", "active"]
        new_raw = send("after rotation")
        assert set(_selectors(old_raw)) == {k["selector"].encode() for k in before}
        assert set(_selectors(new_raw)) == {k["selector"].encode() for k in after if k["state"] == "active"}
        zone = {k["dns_name"]: {"TXT": [k["dns_value"]]} for k in after}
        for raw in (old_raw, new_raw):
            assert [r.result for r in verify(raw, StaticResolver(zone))] == ["pass", "pass"]
        old_rsa = before[0]["selector"]
        out = _mxd(proc, "dkim", "retire", "example.test", old_rsa, "--json")
        assert out.returncode == 0, out.stderr
        assert {k["selector"]: k["state"] for k in json.loads(out.stdout)}[old_rsa] == "retired"
        refused = _mxd(proc, "dkim", "retire", "example.test", after[2]["selector"])
        assert refused.returncode == 1 and "rotate first" in refused.stderr
    finally:
        proc.stop()


def test_queue_and_suppression_commands_use_the_api(mxd):
    env = {"MXD_URL": mxd.url(""), "MXD_TOKEN": mxd.admin_token}
    out = _mxd(mxd, "suppressions", "add", "gone@remote.test", extra_env=env)
    assert out.returncode == 0, out.stderr
    out = _mxd(mxd, "suppressions", "list", "--json", extra_env=env)
    assert [r["address"] for r in json.loads(out.stdout)] == ["gone@remote.test"]
    out = _mxd(mxd, "queue", "list", "--json", extra_env=env)
    assert out.returncode == 0 and json.loads(out.stdout) == []
    out = _mxd(mxd, "queue", "retry", "q_nope", extra_env=env)
    assert out.returncode == 1 and "not_found" in out.stderr and "fix:" in out.stderr
    out = _mxd(mxd, "queue", "list", extra_env={"MXD_URL": mxd.url(""), "MXD_TOKEN": "mxd_bad"})
    assert out.returncode == 1 and "unauthorized" in out.stderr


def _children(pid: int) -> list[int]:
    from pathlib import Path
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def test_worker_processes_end_with_a_killed_daemon(mxd):
    import os

    # The worker process starts with the first message to parse.
    import smtplib
    import time
    with smtplib.SMTP("127.0.0.1", mxd.mx_port) as s:
        s.sendmail("x@remote.test", ["agent@example.test"], b"Subject: wake\r\n\r\nx\r\n")
    assert mxd.wait_messages(1, "agent@example.test")
    pid = mxd.proc.pid
    workers = [c for c in _children(pid) if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()]
    assert workers, "no worker process found"
    mxd.kill9()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{w}") and b"spawn_main" in open(f"/proc/{w}/cmdline", "rb").read()
                   for w in workers)
    mxd.start()            # the fixture stops it again
