"""The `mxd` API commands, run as a subprocess against a real daemon with MXD_URL and MXD_TOKEN:
what they print, that --json is the API's answer, and how errors reach the operator."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest

from tests.support.daemon import MxdProcess, free_port, running_daemon, wait_for


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MxdProcess]:
    """One daemon for the module: example.test ready for outbound, mailboxes agent@ and other@."""
    with running_daemon(tmp_path_factory.mktemp("cli") / "data", env={"MXD_WEBHOOK_ALLOW_PRIVATE": "true"},
                        mailboxes=["agent@example.test", "other@example.test"], ready=["example.test"]) as proc:
        yield proc


def run(proc: MxdProcess, *args: str, token: str | None = None, env: dict | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """`mxd ARGS` with MXD_URL and MXD_TOKEN pointing at the daemon."""
    full = dict(proc.env, MXD_URL=proc.url(""), MXD_TOKEN=token if token is not None else proc.admin_token)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "mxd.cli", *args], env=full, capture_output=True, text=True,
                          timeout=120, input=stdin)


def ok(proc: MxdProcess, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    out = run(proc, *args, **kwargs)
    assert out.returncode == 0, f"mxd {' '.join(args)}: {out.stderr}"
    return out


def as_json(proc: MxdProcess, *args: str, **kwargs: Any) -> Any:
    return json.loads(ok(proc, *args, "--json", **kwargs).stdout)


def route_exists(proc: MxdProcess, method: str, path: str) -> bool:
    """False when the daemon has no such route (404 with the router's own answer)."""
    r = proc.api(method, path)
    return not (r.status_code in (404, 405) and "openapi" in r.text)


# ---------------------------------------------------------------- directory
def test_domains_commands(daemon):
    out = ok(daemon, "domains", "add", "cli.test")
    assert "cli.test" in out.stdout and "ready:" in out.stdout
    listed = as_json(daemon, "domains", "list")
    assert listed == daemon.api("GET", "/api/domains").json()["data"]
    assert {d["name"]: d["ready"] for d in listed}["cli.test"] is False
    assert as_json(daemon, "domains", "ready", "cli.test")["ready"] is True
    assert as_json(daemon, "domains", "ready", "cli.test", "--off")["ready"] is False
    plan = ok(daemon, "domains", "dns-plan", "cli.test").stdout
    assert "cli.test. " in plan and " IN MX " in plan and "_domainkey.cli.test." in plan
    assert as_json(daemon, "domains", "dns-plan", "cli.test") == daemon.api("GET",
                                                                          "/api/domains/cli.test/dns-plan").json()
    verified = as_json(daemon, "domains", "verify", "cli.test")     # no DNS answers here: stays not ready
    assert verified["name"] == "cli.test" and verified["dns_ok"] is False and verified["ready"] is False
    status = as_json(daemon, "domains", "status", "cli.test")
    assert status["name"] == "cli.test" and status["dns_ok"] is False and status["records"]
    text = ok(daemon, "domains", "status", "cli.test").stdout
    assert "dns_ok:" in text and "MX" in text
    table = ok(daemon, "domains", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SOURCE", "ID"]
    assert any(line.split()[:2] == ["example.test", "yes"] for line in table[1:])


def test_mailbox_and_alias_commands(daemon):
    made = as_json(daemon, "mailboxes", "add", "sales@example.test", "--name", "Sales", "--retention-days", "30")
    assert made["address"] == "sales@example.test" and made["display_name"] == "Sales"
    assert made["retention_days"] == 30
    assert as_json(daemon, "mailboxes", "show", "sales@example.test") == \
        daemon.api("GET", "/api/mailboxes/sales@example.test").json()
    assert as_json(daemon, "mailboxes", "list") == daemon.api("GET", "/api/mailboxes").json()["data"]
    lines = ok(daemon, "mailboxes", "list").stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "NAME", "RETENTION", "ID"]
    assert any(line.split()[:3] == ["sales@example.test", "Sales", "30d"] for line in lines)

    alias = as_json(daemon, "aliases", "add", "team@example.test", "sales@example.test", "agent@example.test")
    assert alias["address"] == "team@example.test"
    assert sorted(alias["targets"]) == ["agent@example.test", "sales@example.test"]
    aliases = as_json(daemon, "aliases", "list")
    assert aliases == daemon.api("GET", "/api/aliases").json()["data"]
    assert sorted({a["address"]: a["targets"] for a in aliases}["team@example.test"]) == \
        ["agent@example.test", "sales@example.test"]
    assert "team@example.test" in ok(daemon, "aliases", "list").stdout
    assert as_json(daemon, "aliases", "delete", "team@example.test") == {"deleted": "team@example.test"}
    assert "team@example.test" not in [a["address"] for a in as_json(daemon, "aliases", "list")]

    assert as_json(daemon, "catchall", "example.test", "--mailbox", "sales@example.test") == \
        {"domain": "example.test", "target": "sales@example.test"}
    assert ok(daemon, "catchall", "example.test").stdout.strip() == "*@example.test -> sales@example.test"
    assert as_json(daemon, "catchall", "example.test", "--off")["target"] is None

    out = ok(daemon, "mailboxes", "delete", "sales@example.test")
    assert "deleted" in out.stdout
    gone = run(daemon, "mailboxes", "show", "sales@example.test")
    assert gone.returncode == 1 and gone.stderr.startswith("error: not_found: ")


def test_mailbox_retention_command(daemon):
    if not route_exists(daemon, "GET", "/api/mailboxes/agent@example.test/retention"):
        pytest.skip("GET /api/mailboxes/{mailbox}/retention is not served by this build yet")
    as_json(daemon, "mailboxes", "retention", "agent@example.test", "--days", "12")
    shown = as_json(daemon, "mailboxes", "retention", "agent@example.test")
    assert shown == daemon.api("GET", "/api/mailboxes/agent@example.test/retention").json()
    assert shown["retention_days"] == 12
    assert as_json(daemon, "mailboxes", "show", "agent@example.test")["retention_days"] == 12


def test_token_secret_is_printed_once_and_never_listed(daemon):
    out = ok(daemon, "tokens", "create", "reader", "--scope", "read", "--scope", "search",
             "--mailbox", "agent@example.test")
    secret = next(w for w in out.stdout.split() if w.startswith("mxd_"))
    assert "shown this once" in out.stderr
    assert daemon.api("GET", "/api/mailboxes", token=secret).json()["data"][0]["address"] == "agent@example.test"

    listed = as_json(daemon, "tokens", "list")
    assert listed == daemon.api("GET", "/api/tokens").json()["data"]
    mine = [t for t in listed if t["name"] == "reader"]
    assert len(mine) == 1 and mine[0]["scopes"] == ["read", "search"] and mine[0]["mailboxes"] == ["agent@example.test"]
    text = ok(daemon, "tokens", "list").stdout
    assert secret not in text and secret not in json.dumps(listed) and mine[0]["id"] in text

    created = as_json(daemon, "tokens", "create", "sender", "--scope", "send")
    assert created["token"].startswith("mxd_") and created["scopes"] == ["send"]

    # the scoped token sees only its mailbox through the CLI too
    boxes = as_json(daemon, "mailboxes", "list", token=secret)
    assert [b["address"] for b in boxes] == ["agent@example.test"]
    refused = run(daemon, "tokens", "list", token=secret)
    assert refused.returncode == 1 and "error: forbidden: " in refused.stderr and "fix: " in refused.stderr

    ok(daemon, "tokens", "revoke", mine[0]["id"])
    assert daemon.api("GET", "/api/mailboxes", token=secret).status_code == 401
    assert mine[0]["id"] not in [t["id"] for t in as_json(daemon, "tokens", "list")]


# ---------------------------------------------------------------- mail
def _wait_message(daemon: MxdProcess, mailbox: str, subject: str) -> dict:
    found = wait_for(lambda: [m for m in daemon.messages(mailbox) if m["subject"] == subject], timeout=60)
    assert found, f"{subject!r} never reached {mailbox}"
    return found[0]


def test_send_read_search_reply_and_threads(daemon, tmp_path):
    body = tmp_path / "body.txt"
    body.write_text("The quarterly zanzibar figures are attached.\n")
    sent = as_json(daemon, "send", "--from", "agent@example.test", "--to", "other@example.test",
                   "--subject", "Quarterly figures", "--text-file", str(body))
    assert sent["status"] == "queued" and sent["id"].startswith("msg_")
    assert [r["status"] for r in sent["recipients"]] == ["delivered"]
    inbound = _wait_message(daemon, "other@example.test", "Quarterly figures")

    listed = as_json(daemon, "messages", "list", "--mailbox", "other@example.test")
    assert listed == daemon.api("GET", "/api/messages", params={"mailbox": "other@example.test"}).json()["data"]
    text = ok(daemon, "messages", "list", "--mailbox", "other@example.test").stdout
    assert inbound["id"] in text and "Quarterly figures" in text and "agent@example.test" in text

    shown = as_json(daemon, "messages", "show", inbound["id"])
    assert shown == daemon.api("GET", f"/api/messages/{inbound['id']}").json()
    text = ok(daemon, "messages", "show", inbound["id"]).stdout
    assert "\nsubject:    Quarterly figures\n" in text and "zanzibar figures are attached" in text
    raw = ok(daemon, "messages", "show", inbound["id"], "--raw").stdout
    assert "Subject: Quarterly figures" in raw and "DKIM-Signature:" in raw

    hits = wait_for(lambda: as_json(daemon, "messages", "search", "zanzibar"), timeout=60)
    assert [m["id"] for m in hits if m["mailbox"] == "other@example.test"] == [inbound["id"]]
    assert "Quarterly figures" in ok(daemon, "messages", "search", "zanzibar", "--mailbox",
                                     "other@example.test").stdout

    reply = as_json(daemon, "messages", "reply", inbound["id"], "--text", "Thanks, received.")
    assert reply["thread_id"] == inbound["thread_id"]
    back = _wait_message(daemon, "agent@example.test", "Re: Quarterly figures")
    assert "Thanks, received." in as_json(daemon, "messages", "show", back["id"])["text"]

    thread = as_json(daemon, "threads", "show", inbound["thread_id"])
    assert thread == daemon.api("GET", f"/api/threads/{inbound['thread_id']}").json()
    assert [m["subject"] for m in thread["messages"]] == ["Quarterly figures", "Re: Quarterly figures"]
    text = ok(daemon, "threads", "show", inbound["thread_id"]).stdout
    assert text.count("\n--- msg_") == 2 and "Thanks, received." in text
    assert inbound["thread_id"] in ok(daemon, "threads", "list", "--mailbox", "other@example.test").stdout

    again = as_json(daemon, "threads", "reply", back["thread_id"], "--text", "Good.", token=daemon.admin_token)
    assert again["thread_id"] == back["thread_id"]
    _wait_message(daemon, "other@example.test", "Re: Quarterly figures")


def test_drafts_create_show_send(daemon):
    draft = as_json(daemon, "drafts", "create", "--from", "agent@example.test", "--to", "other@example.test",
                    "--subject", "Draft to send", "--text", "drafted body")
    assert draft["id"].startswith("drf_") and draft["sent_message_id"] is None
    assert as_json(daemon, "drafts", "show", draft["id"]) == daemon.api("GET", f"/api/drafts/{draft['id']}").json()
    assert draft["id"] in ok(daemon, "drafts", "list").stdout
    out = ok(daemon, "drafts", "send", draft["id"])
    assert out.stdout.startswith("queued: msg_")
    assert as_json(daemon, "drafts", "show", draft["id"])["sent_message_id"] == out.stdout.split()[1]
    _wait_message(daemon, "other@example.test", "Draft to send")
    twice = run(daemon, "drafts", "send", draft["id"])
    assert twice.returncode == 1 and "error: conflict: draft already sent" in twice.stderr


def test_send_with_attachment_shows_the_upload(daemon, tmp_path):
    blob = tmp_path / "report.bin"
    blob.write_bytes(bytes(range(256)) * 2400)          # 600 KB: base64 in JSON stays under the API's 1 MB body
    out = ok(daemon, "send", "--from", "agent@example.test", "--to", "other@example.test", "--subject",
             "With attachment", "--text", "see attached", "--attach", str(blob), "--progress",
             "--idempotency-key", "cli-attach-1")
    assert "uploading 1 attachment(s), 600.0 KB" in out.stderr and "uploaded 600.0 KB" in out.stderr
    first = out.stdout.split()[1]
    msg = as_json(daemon, "messages", "show", _wait_message(daemon, "other@example.test", "With attachment")["id"])
    assert [(a["filename"], a["size"]) for a in msg["attachments"]] == [("report.bin", 256 * 2400)]
    att = msg["attachments"][0]["id"]
    assert f"attachment: report.bin application/octet-stream 600.0 KB {att}" in \
        ok(daemon, "messages", "show", msg["id"]).stdout
    saved = tmp_path / "saved.bin"
    out = ok(daemon, "messages", "attachment", msg["id"], att, "-o", str(saved))
    assert saved.read_bytes() == blob.read_bytes() and out.stdout.startswith(f"saved {saved} (600.0 KB")
    here = tmp_path / "here"
    here.mkdir()
    full = dict(daemon.env, MXD_URL=daemon.url(""), MXD_TOKEN=daemon.admin_token)
    for expected in (0, 1):           # the second time the file exists: refused, not overwritten
        done = subprocess.run([sys.executable, "-m", "mxd.cli", "messages", "attachment", msg["id"], att],
                              env=full, cwd=here, capture_output=True, text=True, timeout=120)
        assert done.returncode == expected, done.stderr
    assert (here / "report.bin").read_bytes() == blob.read_bytes() and "error: file_exists: " in done.stderr
    piped = as_json(daemon, "send", "--from", "agent@example.test", "--to", "other@example.test", "--subject",
                    "From stdin", "--text-file", "-", stdin="typed into a pipe\n")
    assert piped["status"] == "queued"
    assert as_json(daemon, "messages", "show", piped["id"])["text"].strip() == "typed into a pipe"
    replay = as_json(daemon, "send", "--from", "agent@example.test", "--to", "other@example.test", "--subject",
                     "With attachment", "--text", "see attached", "--attach", str(blob),
                     "--idempotency-key", "cli-attach-1")
    assert replay["id"] == first and replay["idempotent_replay"] is True


def test_messages_list_all_follows_cursors_with_a_count(daemon):
    for i in range(5):
        daemon.api("POST", "/api/send", json={"from": "agent@example.test", "to": "other@example.test",
                                              "subject": f"page test {i}", "text": "x"})
    _wait_message(daemon, "other@example.test", "page test 4")
    every = daemon.messages("other@example.test")
    out = ok(daemon, "messages", "list", "--mailbox", "other@example.test", "--limit", "2", "--all",
             "--progress", "--json")
    assert json.loads(out.stdout) == every
    counts = [line.strip() for line in out.stderr.splitlines() if line.strip()]
    assert counts[0] == "2 messages" and counts[-1] == f"{len(every)} messages"
    one = ok(daemon, "messages", "list", "--mailbox", "other@example.test", "--limit", "2", "--json")
    assert len(json.loads(one.stdout)) == 2 and "more: --cursor msg_" in one.stderr
    cursor = one.stderr.split("--cursor ")[1].split()[0]
    nxt = as_json(daemon, "messages", "list", "--mailbox", "other@example.test", "--limit", "2", "--cursor", cursor)
    assert nxt == every[2:4]


# ---------------------------------------------------------------- operator views
def test_audit_lists_the_calls(daemon):
    if not route_exists(daemon, "GET", "/api/audit"):
        pytest.skip("GET /api/audit is not served by this build yet")
    ok(daemon, "mailboxes", "add", "audited@example.test")
    ok(daemon, "send", "--from", "agent@example.test", "--to", "other@example.test", "--subject", "audited",
       "--text", "x")
    rows = as_json(daemon, "audit", "--limit", "500")
    assert rows == daemon.api("GET", "/api/audit", params={"limit": 500}).json()["data"]
    assert any(r["action"] == "POST /api/mailboxes" and r["result"] == "ok" for r in rows)
    assert any(r["action"] == "send" for r in rows)
    sends = as_json(daemon, "audit", "--action", "send", "--mailbox", "agent@example.test", "--all")
    assert sends and all(r["action"] == "send" and r["mailbox"] == "agent@example.test" for r in sends)
    text = ok(daemon, "audit", "--limit", "20").stdout
    assert text.splitlines()[0].split() == ["AT", "ACTOR", "ACTION", "MAILBOX", "RESULT", "TARGET"]


def test_retention_run_waits_with_a_spinner(daemon):
    if not route_exists(daemon, "POST", "/api/retention/run"):
        pytest.skip("POST /api/retention/run is not served by this build yet")
    out = ok(daemon, "retention", "run", "--progress")
    assert "running retention" in out.stderr and "running retention took " in out.stderr
    report = as_json(daemon, "retention", "run", "--mailbox", "agent@example.test")
    assert report["messages"] == 0 and report["ran_at"].endswith("Z")


def test_inbox_poll_and_ack(daemon):
    box = daemon.api("GET", "/api/mailboxes/other@example.test").json()["id"]
    if not route_exists(daemon, "GET", f"/v1/mailboxes/{box}/inbox"):
        pytest.skip("GET /v1/mailboxes/{id}/inbox is not served by this build yet")
    daemon.api("POST", "/api/send", json={"from": "agent@example.test", "to": "other@example.test",
                                          "subject": "inbox poll", "text": "x"})
    _wait_message(daemon, "other@example.test", "inbox poll")
    polled = as_json(daemon, "inbox", "poll", box, "--limit", "100")
    assert polled == daemon.api("GET", f"/v1/mailboxes/{box}/inbox", params={"limit": 100}).json()
    items = polled.get("data", polled.get("messages")) if isinstance(polled, dict) else polled
    ids = [m["id"] for m in items]
    assert ids
    ok(daemon, "inbox", "ack", box, *ids)
    after = as_json(daemon, "inbox", "poll", box, "--limit", "100")
    left = after.get("data", after.get("messages")) if isinstance(after, dict) else after
    assert not set(ids) & {m["id"] for m in left}


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append({"headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_commands(daemon):
    if not route_exists(daemon, "GET", "/api/webhooks"):
        pytest.skip("/api/webhooks is not served by this build yet")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        out = ok(daemon, "webhooks", "add", url, "--event", "message.inbound", "--mailbox", "other@example.test")
        assert "shown this once" in out.stderr
        secret = next(w for w in out.stdout.split() if w.startswith("whsec_"))
        listed = as_json(daemon, "webhooks", "list")
        assert listed == daemon.api("GET", "/api/webhooks").json()["data"]
        [hook] = [w for w in listed if w["url"] == url]
        assert hook["event_types"] == ["message.inbound"] and secret not in json.dumps(listed)
        assert hook["id"] in ok(daemon, "webhooks", "list").stdout

        daemon.api("POST", "/api/send", json={"from": "agent@example.test", "to": "other@example.test",
                                              "subject": "hooked", "text": "x"})
        tried = wait_for(lambda: as_json(daemon, "webhooks", "attempts", hook["id"]), timeout=60, every=0.5)
        assert tried and tried[0]["status"] == 200 and tried[0]["event_type"] == "message.inbound"
        assert tried == daemon.api("GET", f"/api/webhooks/{hook['id']}/attempts").json()["data"]
        assert "message.inbound" in ok(daemon, "webhooks", "attempts", hook["id"]).stdout

        rotated = ok(daemon, "webhooks", "rotate", hook["id"])
        assert "whsec_" in rotated.stdout and secret not in rotated.stdout
        assert as_json(daemon, "webhooks", "delete", hook["id"]) == {"deleted": hook["id"]}
        assert hook["id"] not in [w["id"] for w in as_json(daemon, "webhooks", "list")]
    finally:
        server.shutdown()
        server.server_close()


def test_queue_and_suppressions(daemon):
    assert as_json(daemon, "suppressions", "add", "bounced@remote.test")["address"] == "bounced@remote.test"
    assert "bounced@remote.test" in ok(daemon, "suppressions", "list").stdout
    refused = run(daemon, "send", "--from", "agent@example.test", "--to", "bounced@remote.test", "--text", "x")
    assert refused.returncode == 1 and refused.stderr.startswith("error: recipient_suppressed: ")
    assert "fix: Remove it with DELETE /api/suppressions/" in refused.stderr
    ok(daemon, "suppressions", "remove", "bounced@remote.test")
    assert as_json(daemon, "queue", "list") == daemon.api("GET", "/api/queue", params={"limit": 100}).json()["data"]


# ---------------------------------------------------------------- errors
def test_api_error_prints_code_message_and_fix(daemon):
    out = run(daemon, "send", "--from", "nobody@elsewhere.test", "--to", "other@example.test", "--text", "x")
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.splitlines()
    api = daemon.api("POST", "/api/send", json={"from": "nobody@elsewhere.test", "to": "other@example.test",
                                                "text": "x"}).json()["error"]
    assert lines == [f"error: {api['code']}: {api['message']}", f"fix: {api['fix']}"]
    missing = run(daemon, "messages", "show", "msg_nope")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == "error: not_found: message 'msg_nope' not found"
    assert missing.stderr.splitlines()[1].startswith("fix: ")


def test_wrong_or_missing_token_exits_1_with_unauthorized(daemon):
    out = run(daemon, "domains", "list", token="mxd_wrong")
    assert out.returncode == 1 and out.stderr.startswith("error: unauthorized: ")
    assert "fix: " in out.stderr
    out = run(daemon, "domains", "list", token="")
    assert out.returncode == 1 and "MXD_TOKEN is not set" in out.stderr
    out = run(daemon, "domains", "list", "--token", daemon.admin_token, token="")
    assert out.returncode == 0, out.stderr


def test_url_option_overrides_the_environment(daemon):
    out = run(daemon, "domains", "list", "--json", "--url", daemon.url(""), env={"MXD_URL": "http://127.0.0.1:1"})
    assert out.returncode == 0 and "example.test" in out.stdout


def test_usage_error_exits_2(daemon):
    out = run(daemon, "tokens", "create", "x")           # --scope is required
    assert out.returncode == 2 and "--scope" in out.stderr


def test_connection_refused_says_where_and_how_to_fix(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "mxd.cli", "domains", "list"], capture_output=True, text=True,
                         timeout=60, env=dict(__import__("os").environ, MXD_URL=url, MXD_TOKEN="mxd_x"))
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == f"error: unreachable: cannot connect to the mxd API at {url} " \
                                         "(connection refused)"
    assert "fix: Start the daemon (mxd serve), or set MXD_URL" in out.stderr


# ---------------------------------------------------------------- the client against a non-mxd server
class _Proxy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_non_json_error_names_the_status_and_the_url():
    from mxd.client import ApiError, Client
    server = http.server.HTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", "mxd_x") as api:
            with pytest.raises(ApiError) as err:
                api.get("/api/domains")
        assert err.value.code == "http_502" and err.value.status == 502
        assert "GET /api/domains answered HTTP 502: <html><body>502 Bad Gateway</body></html>" == err.value.message
        assert "MXD_URL" in err.value.fix
    finally:
        server.shutdown()
        server.server_close()


def test_client_raises_the_api_error_fields(daemon):
    from mxd.client import ApiError, Client
    with Client(daemon.url(""), daemon.admin_token) as api:
        with pytest.raises(ApiError) as err:
            api.get("/api/domains/nope.test/status")
        assert (err.value.code, err.value.status) == ("not_found", 404) and err.value.fix
        assert [p["data"] for p in api.pages("/api/mailboxes")][0] == api.get("/api/mailboxes")["data"]


# ---------------------------------------------------------------- what the commands print
def test_table_aligns_columns_under_a_header(capsys):
    from mxd.cli.output import table
    table([{"a": "x", "b": None, "c": True}, {"a": "longer", "b": ["p@q.test", "r@s.test"], "c": False}],
          [("A", lambda r: r["a"]), ("B", lambda r: r["b"]), ("C", lambda r: r["c"])])
    assert capsys.readouterr().out.splitlines() == [
        "A       B                   C",
        "x       -                   yes",
        "longer  p@q.test, r@s.test  no",
    ]
    table([], [("A", lambda r: r)], empty="(no rows)")
    assert capsys.readouterr().out == "(no rows)\n"


def test_fields_times_and_sizes(capsys):
    from mxd.cli.output import fields, human_size, when
    fields([("id", "msg_1"), ("attachment", "a.txt"), ("attachment", "b.txt")])
    assert capsys.readouterr().out.splitlines() == ["id:         msg_1", "attachment: a.txt", "attachment: b.txt"]
    assert when(0) == "1970-01-01T00:00:00Z" and when("2026-11-22T02:45:32.290755Z") == "2026-11-22T02:45:32Z"
    assert when(None) is None
    assert [human_size(n) for n in (512, 614400, 2 * 1024 ** 2, 3 * 1024 ** 3)] == \
        ["512 B", "600.0 KB", "2.0 MB", "3.0 GB"]


def test_spinner_and_count_lines_go_to_stderr_only_when_wanted(capsys):
    from mxd.cli.output import Line, Spinner
    with Spinner("sweeping", True):
        wait_for(lambda: "sweeping" in capsys.readouterr().err, timeout=30, every=0.05)
    out = capsys.readouterr()
    assert out.out == "" and out.err.endswith("\n") and "sweeping took " in out.err
    with Spinner("quiet", False):
        pass
    line = Line(False)
    line.update("3 messages")
    line.done("3 messages")
    assert capsys.readouterr() == ("", "")
