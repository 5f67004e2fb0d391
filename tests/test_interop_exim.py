"""Exim 4 and mxd, both ways: Exim relays to mxd's MX, and mxd delivers to Exim as the recipient's MX.

One DNS server (on port 53 of a 127.0.53.x address, since Exim asks port 53 only), one mxd and one
unpacked Exim serve the whole module. Exim relays three of mxd's domains: example.test straight to mxd's
MX (Exim tries STARTTLS), plain.test straight to it without TLS, and retry.test through `ReplyEater`, a
proxy that loses mxd's reply to the first message it carries. Exim is the final destination of exim.test,
whose MX record names Exim's address, and verifies mxd's DKIM signatures with its own verifier.
Exim pipelines QUIT behind the final dot and then half-closes its side of the connection.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import re
import socket
import threading
import time
import uuid
from email.message import EmailMessage
from typing import Iterator

import pytest

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.peers.exim import EximPeer, Route, dns_server_on_port_53, exim_id, skip_unless_available

pytestmark = pytest.mark.slow

EXIM_HOST = "127.0.0.6"
SENDER = "sender@exim.test"
ZONE = {
    "example.test": {"MX": [(10, "mx.example.test")], "TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "mx.example.test": {"A": ["127.0.0.1"]},
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
    "exim.test": {"MX": [(10, "mx.exim.test")]},
    "mx.exim.test": {"A": [EXIM_HOST]},
}


class ReplyEater:
    """A TCP proxy in front of mxd's MX. The first connection it carries is cut where a reply is lost:
    commands and the message pass to mxd up to the final dot of DATA, mxd's answer to that dot is read and
    kept (`eaten`), not forwarded, and both sides are closed; whatever the client sent after the dot (Exim's
    QUIT) never reaches mxd. Later connections pass through untouched, half-closes included."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.eaten: list[bytes] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> "ReplyEater":
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self.listener.close()

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.target, timeout=30)
            if self.connections == 1:
                self._spawn(self._cut, client, server)
            else:
                self._spawn(self._copy, client, server)
                self._spawn(self._copy, server, client)

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)             # pass a half-close on as a half-close
        except OSError:
            pass

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        hold = threading.Event()
        reply = threading.Event()
        held = bytearray()

        def server_to_client() -> None:
            try:
                while data := server.recv(65536):
                    if hold.is_set():
                        held.extend(data)
                        if b"\r\n" in held:
                            reply.set()
                    else:
                        client.sendall(data)
            except OSError:
                pass
            reply.set()
        self._spawn(server_to_client)

        buf, in_data = b"", False
        try:
            while data := client.recv(65536):
                buf += data
                lines = buf.split(b"\r\n")
                buf = lines.pop()                    # an incomplete line waits for the rest
                out = []
                for line in lines:
                    out.append(line + b"\r\n")
                    if not in_data and line.upper() == b"DATA":
                        in_data = True
                    elif in_data and line == b".":
                        hold.set()                   # before mxd can answer the dot
                        server.sendall(b"".join(out))
                        reply.wait(30)
                        self.eaten.append(bytes(held))
                        return
                server.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[MxdProcess, EximPeer, ReplyEater]]:
    skip_unless_available()
    root = tmp_path_factory.mktemp("interop-exim")
    exim_port = free_port(EXIM_HOST)
    try:
        dns = dns_server_on_port_53(ZONE)
    except OSError as e:
        pytest.skip(f"no DNS server on port 53 for Exim: {e}")
    mxd = MxdProcess(root / "mxd", domains=["example.test", "plain.test", "retry.test"],
                     env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                          "MXD_OUTBOUND_MX_PORT": str(exim_port), "MXD_RETRY_SCHEDULE": "1s"})
    proxy = exim = None
    try:
        for rec in mxd.init()["dns_records"]:
            if rec["type"] == "TXT" and "._domainkey." in rec["name"]:
                dns.set(rec["name"], "TXT", [rec["value"]])
        mxd.start()
        for domain in ("example.test", "plain.test", "retry.test"):
            assert mxd.api("POST", "/api/mailboxes", json={"address": f"agent@{domain}"}).status_code == 201
        assert mxd.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        proxy = ReplyEater(("127.0.0.1", mxd.mx_port)).start()
        exim = EximPeer(root / "exim", exim_port, listen_host=EXIM_HOST, nameserver=dns.host,
                        routes={"example.test": Route("127.0.0.1", mxd.mx_port),
                                "plain.test": Route("127.0.0.1", mxd.mx_port, tls=False),
                                "retry.test": Route("127.0.0.1", proxy.port, tls=False)},
                        queue_interval="1h")         # retries run when a test says so (run_queue)
        exim.start()
        yield mxd, exim, proxy
    finally:
        if exim:
            exim.stop()
        if proxy:
            proxy.stop()
        mxd.stop()
        dns.stop()


def _message(to: str, subject: str) -> tuple[bytes, str]:
    m = EmailMessage()
    m["From"] = f"Exim Sender <{SENDER}>"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{uuid.uuid4().hex}@exim.test>"
    m["Date"] = email.utils.formatdate()
    m.set_content("sent by exim\n" + "a line of body text\n" * 40)
    return m.as_bytes(policy=email.policy.SMTP), m["Message-ID"]


def _exim_id(exim: EximPeer, message_id: str) -> str:
    [line] = exim.wait_log(rf"<= {re.escape(SENDER)} .* id={re.escape(message_id.strip('<>'))}", 1, 10)
    return exim_id(line)


def _stored(mxd: MxdProcess, mailbox: str, subject: str, settle: float = 0.5) -> list[dict]:
    """mxd's copies of `subject` in `mailbox`, once one arrived and `settle` seconds passed without more."""
    wait_for(lambda: [m for m in mxd.messages(mailbox) if m["subject"] == subject], timeout=15)
    time.sleep(settle)                               # a duplicate would show up now
    return [m for m in mxd.messages(mailbox) if m["subject"] == subject]


@pytest.mark.parametrize("domain", ["example.test", "plain.test"], ids=["starttls", "plaintext"])
def test_exim_relays_one_message_stored_once_and_acknowledged(world, domain):
    """Exim pipelines QUIT after the dot and half-closes; mxd still answers 250 and 221, and keeps one copy."""
    mxd, exim, _ = world
    rcpt = f"agent@{domain}"
    subject = f"exim to mxd over {domain}"
    wire, message_id = _message(rcpt, subject)
    # -odi: the first delivery attempt is over on return; -v: its SMTP dialogue on stderr
    dialogue = exim.submit(wire, SENDER, rcpt, verbose=True).stderr.decode(errors="replace")
    xid = _exim_id(exim, message_id)
    # Exim sent QUIT behind the dot and stopped sending; mxd still answered both, in order
    assert re.search(r"^\s*SMTP>> \.\n\s*SMTP[>+]> QUIT\n", dialogue, re.M), dialogue   # before any reply
    if domain == "plain.test":
        assert re.search(r"^\s*SMTP\+> QUIT\n\s*SMTP\(shutdown\)>>\n", dialogue, re.M), dialogue
    assert re.search(r"^cmdlog: '.*:DATA:250:250:354:\.:QUIT:250:221'$", dialogue, re.M), dialogue
    lines = exim.message_log(xid)
    delivered = [x for x in lines if " => " in x]
    assert len(delivered) == 1, "\n".join(lines)
    assert re.search(r' C="250 2\.0\.0 OK queued as inb_\w+"', delivered[0]), delivered[0]
    assert f"H=127.0.0.1 [127.0.0.1]:{mxd.mx_port}" in delivered[0]
    if domain == "example.test":
        assert " X=TLS" in delivered[0], delivered[0]    # Exim's GnuTLS client against mxd's STARTTLS
    else:
        assert " X=" not in delivered[0], delivered[0]
    assert not [x for x in lines if " == " in x or "defer" in x], "\n".join(lines)
    assert any(x.endswith(" Completed") or " Completed " in x for x in lines), "\n".join(lines)
    assert exim.queue_count() == 0

    [stored] = _stored(mxd, rcpt, subject)
    raw = mxd.api("GET", f"/api/messages/{stored['id']}/raw").content
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == message_id
    received = [str(h) for h in parsed.get_all("Received")]
    assert "(mxd)" in received[0] and "mx.exim.test" in received[0], received
    assert re.search(r"from root by mx\.exim\.test with local \(Exim 4\.\d+\)", received[1]), received


def test_exim_as_mx_verifies_both_dkim_signatures(world):
    """mxd delivers to exim.test's MX (found through DNS); Exim's own verifier passes both signatures."""
    mxd, exim, _ = world
    before = len(exim.received())
    r = mxd.api("POST", "/api/send", json={
        "from": "agent@example.test", "from_name": "Agent Smith", "to": "alice@exim.test",
        "subject": "Grüße an Exim", "text": "plain body, with trailing spaces   \nand a second line\n",
        "html": "<p>html body</p>"})
    assert r.status_code == 202, r.text
    sent = r.json()

    def final() -> dict | None:
        row = mxd.api("GET", f"/api/messages/{sent['id']}").json()["delivery"][0]
        return row if row["status"] not in ("queued", "deferred") else None
    row = wait_for(final, timeout=30)
    assert row and row["status"] == "delivered", (row, exim.log()[-3000:])
    assert row["last_host"] == "mx.exim.test" and row["last_reply"].startswith("250 OK id="), row

    found = exim.wait_received(before + 1, timeout=10)
    assert len(found) == before + 1, exim.log()[-3000:]
    msg = email.message_from_bytes(found[-1], policy=email.policy.default)
    assert msg["Subject"] == "Grüße an Exim" and msg["Envelope-to"] == "alice@exim.test"
    verdicts = sorted(str(h) for h in msg.get_all("X-Exim-DKIM"))
    assert verdicts == ["example.test ed25519-sha256 pass", "example.test rsa-sha256 pass"], verdicts
    assert re.fullmatch(r"<bounces\+q_[0-9a-z]+\.[0-9a-z]+@example\.test>", msg["Return-path"]), msg["Return-path"]
    xid = exim_id(exim.wait_log(r"<= bounces\+q_\S+@example\.test H=\(mx\.example\.test\) ", 1, 5)[-1])
    arrival = [x for x in exim.message_log(xid) if " <= " in x][0]
    assert " P=esmtps " in arrival and " X=TLS" in arrival, arrival   # mxd's client took Exim's STARTTLS


def test_exim_retry_after_a_lost_reply_is_not_a_second_copy(world):
    """mxd stored the message and answered 250, but Exim never saw the 250: it defers and retries, and
    mxd recognises the retransmission (answering 250 again) instead of storing a second copy."""
    mxd, exim, proxy = world
    rcpt = "agent@retry.test"
    subject = "exim retry after a lost reply"
    wire, message_id = _message(rcpt, subject)
    exim.submit(wire, SENDER, rcpt)                  # the first attempt: through the cut
    xid = _exim_id(exim, message_id)
    assert proxy.connections == 1 and len(proxy.eaten) == 1, proxy.eaten
    assert proxy.eaten[0].startswith(b"250 "), proxy.eaten   # mxd had committed and answered
    deferred = [x for x in exim.message_log(xid) if " == " in x]
    assert len(deferred) == 1 and "Remote host closed connection in response to end of data" in deferred[0], \
        "\n".join(exim.message_log(xid))
    assert not [x for x in exim.message_log(xid) if " => " in x]

    exim.run_queue()                                 # the retry, now through an honest proxy
    delivered = exim.wait_log(rf"{xid} => ", 1, 20)
    lines = exim.message_log(xid)
    assert len(delivered) == 1, "\n".join(lines)
    assert re.search(r' C="250 [^"]*"', delivered[0]), delivered[0]
    assert proxy.connections >= 2
    assert len([x for x in lines if " == " in x]) == 1, "\n".join(lines)
    assert exim.wait_queue_empty(10)

    stored = _stored(mxd, rcpt, subject)
    assert len(stored) == 1, [m["id"] for m in stored]
