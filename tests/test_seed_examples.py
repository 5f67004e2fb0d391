"""Every curl example of both seed API documents, run with the real curl through bash against a real daemon.

The documents are parsed as they are (`curl ...` lines joined over backslash continuations and open
quotes, `export` lines, and a bare URL line); only the base URLs, the API key, the verification code
and the placeholder ids are replaced, with values created by the earlier examples. The sign-up code is
read from the mail mxd really sends (through a loopback DNS server to a sink acting as example.com's MX).
Each answer's status and body are checked; a curl example no check knows fails the test.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import smtplib
import subprocess
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.support.corpora import CORPUS
from tests.support.daemon import free_port, wait_for
from tests.support.sink import DOMAIN, body_text, code_in, platform_world

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")]

SEEDS = CORPUS.parent.parent / "seeds"
BASE_URLS = ("https://litemx-api-worker.litemx.workers.dev", "https://api.loftbox.net", "https://loftbox.net")


# ---------------------------------------------------------------- reading the documents
def _incomplete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(text)
    except ValueError:          # an open quote: a JSON body over several lines
        return True
    return False


def examples(path: Path) -> list[tuple[str, str]]:
    """("export" | "curl", shell text) in document order; a line that is only a URL becomes a curl."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(("curl ", "export ")):
            text = lines[i]
            while _incomplete(text) and i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
            out.append(("curl" if line.startswith("curl") else "export", text.strip()))
        elif re.fullmatch(r"https://\S+", line):
            out.append(("curl", f'curl -sS -i "{line}"'))
        i += 1
    return out


def test_the_documents_hold_the_examples_this_test_knows() -> None:
    lite = [t for k, t in examples(SEEDS / "litemx-api.txt") if k == "curl"]
    loft = [t for k, t in examples(SEEDS / "loftbox-api.txt") if k == "curl"]
    assert len(lite) == 2 and len(loft) == 23
    assert any("--check" in t for t in loft) and any("inbox/ack" in t for t in loft)


# ---------------------------------------------------------------- running them
@dataclass
class Answer:
    returncode: int
    status: int | None
    headers: dict[str, str]
    body: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Run:
    base: str
    env: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)     # placeholder -> real value
    seen: list[str] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        for url in BASE_URLS:
            text = text.replace(url, self.base)
        for placeholder, value in self.values.items():
            text = text.replace(placeholder, value)
        return text

    def export(self, text: str) -> None:
        name, _, value = text[len("export "):].partition("=")
        value = shlex.split(value)[0] if value else ""
        if name == "LOFTBOX_API_KEY" and "LOFTBOX_API_KEY" in self.env:
            return                                            # the real key, set when verification returned it
        if name == "LOFTBOX_VERIFICATION_TOKEN":
            value = self.values["verification code"]
        self.env[name] = self.substitute(value)

    def curl(self, text: str) -> Answer:
        command = self.substitute(text)
        self.seen.append(command)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=self.env, capture_output=True,
                              text=True, timeout=120, cwd=self.env["HOME"])
        status, headers, body = None, {}, done.stdout
        if re.search(r"(^|\s)-i(\s|$)", command):
            head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
            first, *rest = head.split("\n")
            status = int(first.split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
        return Answer(done.returncode, status, headers, body, done.stderr)


class Receiver:
    """The agent's webhook endpoint (the document's https://example.com/webhooks/loftbox): keeps every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/loftbox"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = platform_world(tmp_path_factory.mktemp("seeds") / "data")
    yield w
    w.stop()


def _deliver_inbound(world, to: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Customer <customer@example.org>", to, subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.org>"
    msg.set_content("Where is my order?\n")
    with smtplib.SMTP("127.0.0.1", world.mxd.mx_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="customer@example.org", to_addrs=[to])
    assert wait_for(lambda: [m for m in world.mxd.messages(to) if m["subject"] == subject], timeout=60)


def _check_loftbox(world, run: Run, command: str, a: Answer, home: Path) -> None:
    """The expected answer of one example of loftbox-api.txt; records the ids later examples use."""
    def ok(status: int) -> Any:
        assert a.returncode == 0 and a.status == status, (a.status, a.body[:2000], command)
        return a.json() if a.headers.get("content-type", "").startswith("application/json") else a.body

    if command.startswith("curl -fsSL"):                         # install.sh piped into sh
        assert a.returncode == 0, (command, a.body, a.stderr)
        if "--check" in command:
            assert "outdated" not in a.body and "missing" not in a.body
            assert a.body.count("installed ") == 6, a.body      # three skills in ~/.claude and ~/.codex
        elif "--update" in command:
            assert a.body.count("up to date ") == 6, a.body
        else:
            assert "installed " in a.body or "up to date " in a.body, a.body
        where = {"--agent codex": home / ".codex" / "skills", "--target": home / ".my-agent" / "skills"}
        target = next((d for k, d in where.items() if k in command), home / ".claude" / "skills")
        for name in ("register-loftbox-mail-agent", "send-loftbox-mail", "check-loftbox-mail"):
            text = (target / name / "SKILL.md").read_text()
            assert text.startswith(f"---\nname: {name}\n") and run.base in text
        return
    if '/health"' in command:
        assert ok(200)["status"] == "ok"
    elif "/openapi.json" in command:
        doc = ok(200)
        assert doc["openapi"].startswith("3.") and "/v1/messages" in doc["paths"] and "/api/send" in doc["paths"]
    elif "/llms.txt" in command:
        text = ok(200)
        assert a.headers["content-type"].startswith("text/plain") and "/v1/mailboxes/{id}/inbox" in text
        assert run.base in text
    elif "/v1/auth/signup/verify" in command:
        body = ok(201)
        assert body["api_key"].startswith("mxd_") and body["organization"]["verified"] is True
        assert body["limits"]["daily_send_cap"] == 100 and body["welcome_notice"]["status"] == "queued"
        run.env["LOFTBOX_API_KEY"] = body["api_key"]
        welcome = world.sink.wait("owner@example.com", "Welcome")[0]
        assert "100 outgoing recipients per rolling 24 hours" in body_text(welcome)
        assert body["api_key"] not in body_text(welcome)
    elif "/v1/auth/signup" in command:
        body = ok(201)
        assert body["organization"]["slug"] == "example-agents" and body["organization"]["verified"] is False
        mail = world.sink.wait("owner@example.com", "verification code")[-1]
        assert mail["From"].addresses[0].addr_spec == f"postmaster@{DOMAIN}"
        run.values["verification code"] = code_in(mail)
    elif "/v1/agents?external_id=" in command:
        assert ok(200)["data"] == []                           # the document checks before it creates
    elif "/v1/agents/agent_uuid/mailboxes" in command:
        body = ok(201)
        assert body["address"] == f"support-agent@{DOMAIN}" and body["retention_days"] == 7
        assert body["agent_id"] == run.values["agent_uuid"] and body["display_name"] == "Support Agent"
        run.values["mailbox_uuid"] = body["id"]
        run.values["support@example.com"] = body["address"]
    elif "/v1/agents/agent_uuid/webhooks" in command:
        body = ok(201)
        assert body["secret"].startswith("whsec_") and body["url"] == run.values["https://example.com/webhooks/loftbox"]
        assert sorted(body["event_types"]) == ["message.delivered", "message.inbound"]
        run.values["webhook secret"] = body["secret"]
    elif "/v1/agents" in command and "-d '" in command:
        body = ok(201)
        assert body["id"].startswith("agt_") and body["external_id"] == "hermes:support-agent"
        assert body["owner_label"] == "Customer Operations" and body["policy_scope"] == "agent"
        run.values["agent_uuid"] = body["id"]
    elif "/v1/agents" in command:
        assert ok(200)["data"] == []
    elif "/v1/domains/domain_uuid/dns" in command:
        body = ok(200)
        types = {r["type"] for r in body["records"]}
        assert body["domain"] == "mail.example.com" and {"MX", "TXT"} <= types
        assert any("._domainkey.mail.example.com" in r["name"] for r in body["records"])
    elif "/v1/domains/domain_uuid/verify" in command:
        body = ok(200)
        assert body["dns_ok"] is False and body["status"] == "pending"     # nothing is published for it
        assert {r["status"] for r in body["records"]} <= {"missing", "wrong", "error"}
    elif "/v1/domains" in command:
        body = ok(201)
        assert body["id"].startswith("dom_") and body["domain"] == "mail.example.com"
        assert body["status"] == "pending" and body["dns_records"]
        run.values["domain_uuid"] = body["id"]
    elif "/v1/messages" in command:
        body = ok(201)
        assert body["id"].startswith("msg_") and body["status"] == "queued"
        assert body["metadata"] == {"ticket_id": "ticket_123"} and body["mailbox_id"] == run.values["mailbox_uuid"]
        mail = world.sink.wait("recipient@example.com", "Support follow-up")[0]
        assert str(mail["From"]) == f"Support Agent <support-agent@{DOMAIN}>"
        assert "ticket_123" not in mail.as_string()                      # metadata stays out of the message
    elif "/inbox/ack" in command:
        body = ok(200)
        assert body["acknowledged"] == [run.values["message_uuid_or_msg_public_id"]] and body["not_found"] == []
    elif "/inbox?limit=20" in command:
        body = ok(200)
        assert [m["subject"] for m in body["data"]] == ["Order question"]
        assert body["data"][0]["from"]["address"] == "customer@example.org"
        assert body["data"][0]["text"] == "Where is my order?\n"
        run.values["message_uuid_or_msg_public_id"] = body["data"][0]["id"]
    else:
        raise AssertionError(f"no check for {command!r}")


def test_every_curl_example_of_both_documents(world, receiver, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOFTBOX_", "BASE_URL", "MXD_"))}
    env.update(HOME=str(home), LC_ALL="C")
    run = Run(world.mxd.url(""), env)
    run.values["https://example.com/webhooks/loftbox"] = receiver.url       # the agent's endpoint

    for kind, text in examples(SEEDS / "loftbox-api.txt"):
        if kind == "export":
            run.export(text)
            continue
        if "/inbox?limit=20" in text:                # mail for the inbox example: a customer writes in
            _deliver_inbound(world, run.values["support@example.com"], "Order question")
        answer = run.curl(text)
        _check_loftbox(world, run, text, answer, home)

    # The webhook registered by the document got the inbound message, signed (Standard Webhooks).
    def inbound_events() -> list[dict]:
        events = [Webhook(run.values["webhook secret"]).verify(body, headers) for headers, body in receiver.posts]
        return [e for e in events if e["type"] == "message.inbound"]
    events = wait_for(inbound_events, timeout=60)
    assert events and events[0]["data"]["message_id"] == run.values["message_uuid_or_msg_public_id"], events

    # After the ack the inbox is empty; the message itself is still there.
    key = run.env["LOFTBOX_API_KEY"]
    r = httpx.get(world.mxd.url(f"/v1/mailboxes/{run.values['mailbox_uuid']}/inbox"),
                  headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200 and r.json()["data"] == []

    # litemx-api.txt, with the organisation's key as <token> and its mailbox as support@example.com.
    run.values["<token>"] = key
    for text in (t for k, t in examples(SEEDS / "litemx-api.txt") if k == "curl"):
        answer = run.curl(text)
        assert answer.returncode == 0, answer.stderr
        if text.endswith("/openapi.json\""):
            assert answer.status == 200
            assert json.loads(answer.body)["openapi"].startswith("3.")
            continue
        listed = json.loads(answer.body)["data"]
        assert {m["subject"] for m in listed} == {"Order question", "Support follow-up"}
        assert all(m["mailbox"] == run.values["support@example.com"] for m in listed)

    assert len(run.seen) == 25
    assert not [c for c in run.seen if "loftbox.net" in c or "workers.dev" in c or "_uuid" in c]


# ---------------------------------------------------------------- the installed skills' own commands
def _sh_blocks(path: Path) -> list[str]:
    """The shell commands of a SKILL.md: its ```sh blocks that run something (not the settings sample)."""
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
    return [b for b in blocks if re.match(r"(curl|\. ~|mkdir|echo|printf)", b)]


def test_the_installed_skills_register_send_and_check_mail(world, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOFTBOX_", "MXD_"))}
    env.update(HOME=str(home), LC_ALL="C")
    base = world.mxd.url("")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", f'curl -fsSL "{base}/install.sh" | sh -s -- --agent claude'],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    skills = home / ".claude" / "skills"

    def sh(command: str, **values: str) -> Any:
        for placeholder, value in values.items():
            command = command.replace(placeholder, value)
        out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (command, out.stderr)
        return json.loads(out.stdout) if out.stdout.strip() else None

    owner = "skills-owner@example.com"
    signup, verify, save_key, lookup, create, save_agent, mailbox, save_box = _sh_blocks(
        skills / "register-loftbox-mail-agent" / "SKILL.md")
    answer = sh(signup, OWNER_EMAIL=owner, **{"ORG NAME": "Skill Org", "org-slug": "skill-org"})
    assert answer["status"] == "verification_sent"
    code = code_in(world.sink.wait(owner, "verification code")[-1])
    key = sh(verify, OWNER_EMAIL=owner, **{"123456": code})["api_key"]
    sh(save_key, **{"mxd_...": key})
    settings = home / ".config" / "mxd" / "agent.env"
    assert settings.stat().st_mode & 0o777 == 0o600
    assert sh(lookup, EXTERNAL_ID="claude:test-host:billing")["data"] == []
    agent = sh(create, EXTERNAL_ID="claude:test-host:billing")
    assert sh(create, EXTERNAL_ID="claude:test-host:billing")["id"] == agent["id"]       # registering again
    assert [a["id"] for a in sh(lookup, EXTERNAL_ID="claude:test-host:billing")["data"]] == [agent["id"]]
    sh(save_agent, **{"agt_...": agent["id"]})
    box = sh(mailbox)
    assert box["address"] == f"billing-agent@{DOMAIN}" and box["agent_id"] == agent["id"]
    sh(save_box, **{"mbx_...": box["id"], "name@domain": box["address"]})
    assert f"MXD_TOKEN={key}\n" in settings.read_text() and f"MXD_MAILBOX_ID={box['id']}\n" in settings.read_text()

    [send] = _sh_blocks(skills / "send-loftbox-mail" / "SKILL.md")
    sent = sh(send, **{"someone@example.com": "reader@example.com"})
    assert sent["status"] == "queued" and sent["metadata"] == {"task": "short reference"}
    mail = world.sink.wait("reader@example.com", "Subject")[0]
    assert str(mail["From"]) == f"Billing Agent <{box['address']}>" and body_text(mail).strip() == "Plain text body."

    _deliver_inbound(world, box["address"], "Reply to billing")
    poll, ack = _sh_blocks(skills / "check-loftbox-mail" / "SKILL.md")
    [got] = sh(poll)["data"]
    assert got["subject"] == "Reply to billing"
    assert sh(ack, **{"msg_...": got["id"]})["acknowledged"] == [got["id"]]
    assert sh(poll)["data"] == []
