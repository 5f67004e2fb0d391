"""The spam engine client (mxd.defences.spamengine) against a real rspamd, and against loopback servers that
misbehave: silent, slow, answering garbage. Whatever rspamd does, check() answers and never raises."""
from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.config import Config
from mxd.defences import spamengine
from mxd.defences.spamengine import MAX_SCAN_BYTES, BadAnswer, SpamVerdict, auth_headers, check, parse_answer
from tests.support.peers.rspamd import GTUBE, rspamd  # noqa: F401  (session fixture)

CLEAN = (b"From: Alice <alice@remote.test>\r\nTo: agent@example.test\r\nSubject: minutes of Tuesday\r\n"
         b"Message-ID: <m1@remote.test>\r\nDate: Thu, 03 Dec 2026 14:00:00 +0000\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello,\r\n\r\nthe minutes are below.\r\n")
SPAM = (b"From: x@remote.test\r\nTo: agent@example.test\r\nSubject: test\r\nMessage-ID: <g@remote.test>\r\n"
        b"Date: Thu, 03 Dec 2026 14:00:00 +0000\r\n\r\n" + GTUBE.encode() + b"\r\n")
AR = "mx.example.test; spf=pass smtp.mailfrom=alice@remote.test; dkim=none; dmarc=none header.from=remote.test"


def cfg(url: str, timeout: float = 10.0) -> Config:
    return Config(rspamd_url=url, rspamd_timeout=timeout, hostname="mx.example.test")


async def ask(config: Config, data: bytes = CLEAN, **kw) -> SpamVerdict:
    args = dict(ip="192.0.2.10", helo="mail.remote.test", mail_from="alice@remote.test",
                rcpts=["agent@example.test"], authentication_results=AR, hostname="mail.remote.test",
                queue_id="inb_1")
    args.update(kw)
    return await check(config, data, **args)


# ------------------------------------------------------------------ a real rspamd
async def test_gtube_is_rejected(rspamd):
    verdict = await ask(cfg(rspamd.url), SPAM)
    assert verdict.action == "reject"
    assert verdict.engine_action == "reject"
    assert verdict.unscored == ""
    assert "GTUBE" in verdict.symbols
    assert verdict.score is not None and verdict.score >= verdict.required_score


async def test_clean_message_is_accepted_with_score_and_symbols(rspamd):
    verdict = await ask(cfg(rspamd.url))
    assert verdict.action == "accept"
    assert verdict.engine_action in ("no action", "greylist")
    assert verdict.unscored == ""
    assert isinstance(verdict.score, float) and verdict.score < verdict.required_score
    assert verdict.required_score == 15.0                          # rspamd 3.4's default reject threshold
    assert "R_SPF_ALLOW" in verdict.symbols                        # mxd's SPF result, taken from the SPF header
    assert verdict.symbols["R_SPF_ALLOW"] < 0
    assert verdict.seconds > 0
    doc = verdict.to_json()
    assert doc["action"] == "accept" and doc["unscored"] is None and doc["symbols"] == verdict.symbols
    json.dumps(doc)                                                # storable as it is


async def test_spf_fail_from_mxd_reaches_rspamd(rspamd):
    verdict = await ask(cfg(rspamd.url), authentication_results="mx; spf=fail smtp.mailfrom=a@remote.test")
    assert "R_SPF_FAIL" in verdict.symbols


async def test_hostile_envelope_values_are_sent_cleaned(rspamd):
    verdict = await ask(cfg(rspamd.url), helo="evil\r\nX-Injected: 1", mail_from="a\x00b@remote.test",
                        rcpts=["é@exämple.test", "", "b\n@example.test"], ip="not an ip", queue_id="\x7f")
    assert verdict.unscored == "" and verdict.action in ("accept", "quarantine")


async def test_rspamd_stopped_gives_unscored_without_waiting_for_the_timeout(rspamd):
    with rspamd.stopped():
        verdict = await ask(cfg(rspamd.url, timeout=60))
    assert verdict.action == "accept"
    assert verdict.score is None
    assert verdict.unscored.startswith("cannot connect to rspamd")   # refused, not a 60 s timeout
    assert (await ask(cfg(rspamd.url))).unscored == ""                # and back once it is


async def test_client_is_reopened_after_aclose(rspamd):
    assert (await ask(cfg(rspamd.url))).unscored == ""
    await spamengine.aclose()
    assert (await ask(cfg(rspamd.url))).unscored == ""
    await spamengine.aclose()
    await spamengine.aclose()                                         # twice is harmless


# ------------------------------------------------------------------ servers that misbehave
@dataclass
class FakeRspamd:
    """A loopback HTTP server answering every request with `status` and `body` (or hanging, or dripping)."""
    status: int = 200
    body: bytes = b"{}"
    mode: str = "answer"                   # answer | hang | drip | close
    requests: list[tuple[list[tuple[str, str]], bytes]] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines if ":" in line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length)
            self.requests.append((headers, body))
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "close":                # read the request, then hang up without a word
                return
            if self.mode == "drip":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (self.status, len(self.body)) + self.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "FakeRspamd":
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await spamengine.aclose()
        assert self.server is not None
        self.server.close()


async def test_request_carries_the_envelope_and_authentication_results():
    answer = {"action": "no action", "score": 1.5, "required_score": 15, "symbols": {"A": {"score": 1.5}}}
    async with FakeRspamd(body=json.dumps(answer).encode()) as fake:
        verdict = await ask(cfg(fake.url + "/"), rcpts=["a@example.test", "b@example.test"])
    assert verdict == SpamVerdict("accept", 1.5, 15.0, "no action", {"A": 1.5}, "", verdict.seconds)
    (headers, body), = fake.requests
    assert body == CLEAN
    h = {}
    for k, v in headers:
        h.setdefault(k.lower(), []).append(v)
    assert h["ip"] == ["192.0.2.10"] and h["helo"] == ["mail.remote.test"] and h["from"] == ["alice@remote.test"]
    assert h["rcpt"] == ["a@example.test", "b@example.test"]
    assert h["queue-id"] == ["inb_1"] and h["hostname"] == ["mail.remote.test"] and h["mta-name"] == ["mx.example.test"]
    assert json.loads(h["spf"][0]) == {"result": "pass"}
    assert json.loads(h["dkim"][0]) == {"result": "na"}
    assert json.loads(h["dmarc"][0]) == {"result": "na"}
    assert "pass" not in h


@pytest.mark.parametrize("engine_action, action", [
    ("reject", "reject"), ("soft reject", "soft_reject"), ("add header", "quarantine"),
    ("rewrite subject", "quarantine"), ("greylist", "accept"), ("no action", "accept"),
    ("discard", "quarantine"), ("something new", "accept"),
])
async def test_actions_map_to_mxds(engine_action, action):
    answer = {"action": engine_action, "score": 7.0, "required_score": 15.0, "symbols": {}}
    async with FakeRspamd(body=json.dumps(answer).encode()) as fake:
        verdict = await ask(cfg(fake.url))
    assert (verdict.action, verdict.engine_action, verdict.score, verdict.unscored) == (action, engine_action, 7.0, "")


async def test_silent_rspamd_gives_unscored_after_the_timeout():
    async with FakeRspamd(mode="hang") as fake:
        verdict = await ask(cfg(fake.url, timeout=0.3))
    assert verdict.action == "accept" and verdict.score is None
    assert verdict.unscored == "rspamd did not answer within 0.3s"


async def test_dripping_rspamd_is_cut_off_by_the_deadline():
    async with FakeRspamd(mode="drip") as fake:
        verdict = await ask(cfg(fake.url, timeout=0.5))
    assert verdict.unscored == "rspamd did not answer within 0.5s"


async def test_rspamd_hanging_up_mid_request_gives_unscored():
    async with FakeRspamd(mode="close") as fake:
        verdict = await ask(cfg(fake.url))
    assert verdict.action == "accept" and verdict.score is None
    assert verdict.unscored == "HTTP error talking to rspamd: RemoteProtocolError"


async def test_listening_socket_that_never_accepts_gives_unscored():
    with socket.socket() as sock:                   # backlog full of nothing: connect succeeds, no answer
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        verdict = await ask(cfg(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=0.3))
    assert verdict.action == "accept" and "did not answer" in verdict.unscored


@pytest.mark.parametrize("status, body, why", [
    (200, b"<html>hello</html>", "bad answer from rspamd: not JSON"),
    (200, b"[1, 2, 3]", "bad answer from rspamd: not a JSON object"),
    (200, b'{"score": 1}', "bad answer from rspamd: no action"),
    (200, b'{"action": "reject", "score": "high"}', "bad answer from rspamd: score is not a number"),
    (200, b'{"action": "reject", "score": NaN}', "bad answer from rspamd: score is not a number"),
    (200, b'{"action": "reject", "score": 1, "symbols": []}', "bad answer from rspamd: symbols is not an object"),
    (200, b'{"error": "invalid command"}', "bad answer from rspamd: rspamd error: invalid command"),
    (200, b"[" * 100000, "bad answer from rspamd: not JSON"),
    (200, b"x" * (2 * 1024 * 1024), "bad answer from rspamd: answer larger than"),
    (500, b'{"error": "invalid command"}', "rspamd answered HTTP 500 (rspamd error: invalid command)"),
    (404, b"", "rspamd answered HTTP 404"),
])
async def test_garbage_answers_give_unscored(status, body, why):
    async with FakeRspamd(status=status, body=body) as fake:
        verdict = await ask(cfg(fake.url))
    assert verdict.action == "accept" and verdict.score is None and verdict.symbols == {}
    assert verdict.unscored.startswith(why), verdict.unscored


async def test_odd_symbols_are_dropped_and_the_rest_kept():
    answer = {"action": "add header", "score": 8, "required_score": 15, "messages": {"smtp_message": "bad\r\nx"},
              "symbols": {"GOOD": {"score": 2.5}, "BOOL": {"score": True}, "NONE": {}, "STR": "x", "BARE": -1}}
    async with FakeRspamd(body=json.dumps(answer).encode()) as fake:
        verdict = await ask(cfg(fake.url))
    assert verdict.action == "quarantine" and verdict.score == 8.0
    assert verdict.symbols == {"GOOD": 2.5, "BARE": -1.0}
    assert verdict.message == "bad??x"


async def test_too_large_message_is_not_sent():
    async with FakeRspamd(body=b'{"action": "reject", "score": 99}') as fake:
        verdict = await ask(cfg(fake.url), b"x" * (MAX_SCAN_BYTES + 1))
    assert verdict.action == "accept" and verdict.unscored.startswith("too large to scan")
    assert fake.requests == []


async def test_no_engine_configured():
    verdict = await ask(cfg(""))
    assert verdict.action == "accept" and verdict.unscored == "no spam engine configured"


async def test_unreachable_host_gives_unscored():
    verdict = await ask(cfg("http://127.0.0.1:1"))
    assert verdict.action == "accept" and verdict.unscored.startswith("cannot connect to rspamd")


# ------------------------------------------------------------------ hostile input, generated
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
_answers = st.one_of(
    st.binary(max_size=300),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "action": st.sampled_from(["reject", "no action", "add header", ""]) | _json_values,
        "score": st.floats() | _json_values, "required_score": st.floats() | _json_values,
        "symbols": st.dictionaries(st.text(max_size=20), _json_values | st.fixed_dictionaries(
            {"score": st.floats() | _json_values}), max_size=5) | _json_values,
        "messages": _json_values,
    }).map(lambda d: json.dumps(d).encode()),
)


@given(_answers)
@settings(max_examples=400, deadline=None)
def test_parse_answer_returns_a_verdict_or_bad_answer(body):
    try:
        verdict = parse_answer(body)
    except BadAnswer:
        return
    assert verdict.action in ("accept", "quarantine", "reject", "soft_reject")
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in verdict.symbols.items())
    json.dumps(verdict.to_json(), allow_nan=False)                  # storable: no NaN or infinity


@given(_answers, st.sampled_from([200, 400, 500, 503]))
@settings(max_examples=60, deadline=None)
def test_check_never_raises_whatever_rspamd_answers(body, status):
    async def run() -> SpamVerdict:
        async with FakeRspamd(status=status, body=body) as fake:
            return await ask(cfg(fake.url, timeout=5))
    verdict = asyncio.run(run())
    assert verdict.action in ("accept", "quarantine", "reject", "soft_reject")
    assert verdict.unscored or verdict.score is not None


@given(st.text(max_size=300) | st.sampled_from([
    "mx; spf=pass", "mx; dkim=pass header.d=a.test; dkim=fail header.d=b.test", "mx; dmarc=fail header.from=x",
    "mx; dkim=pass header.d=\"evil\\\"; x\"", "; ; ;", "mx; spf=pass; spf=fail", "(", "mx; none"]))
@settings(max_examples=300, deadline=None)
def test_auth_headers_from_any_field_are_rspamd_json(value):
    for name, header in auth_headers(value):
        assert name in ("SPF", "DKIM", "DMARC")
        doc = json.loads(header)
        assert isinstance(doc, dict) and ("result" in doc or "results" in doc)
        assert header.isascii() and "\n" not in header


def test_auth_headers_map_mxds_results():
    got = dict(auth_headers("mx.example.test; spf=softfail smtp.mailfrom=a@x.test; dkim=pass header.d=x.test "
                            "header.s=s1; dkim=temperror header.d=y.test; dmarc=fail header.from=x.test"))
    assert json.loads(got["SPF"]) == {"result": "softfail"}
    assert json.loads(got["DKIM"]) == {"results": [{"result": "pass", "domain": "x.test"},
                                                   {"result": "tempfail", "domain": "y.test"}]}
    assert "DMARC" not in got                       # a failure's policy is not in the field: rspamd evaluates it
    assert auth_headers("") == [] and auth_headers("not a field") == []


async def test_own_hostname_is_not_sent_as_the_clients():
    async with FakeRspamd(body=b'{"action": "no action", "score": 0}') as fake:
        await ask(cfg(fake.url), hostname="MX.example.test.")
    (headers, _), = fake.requests
    names = [k.lower() for k, _ in headers]
    assert "hostname" not in names and "mta-name" in names


@given(ip=st.text(max_size=50), helo=st.text(max_size=300), mail_from=st.text(max_size=300),
       rcpts=st.lists(st.text(max_size=100), max_size=5), hostname=st.text(max_size=100),
       queue_id=st.text(max_size=50))
@settings(max_examples=300, deadline=None)
def test_request_headers_from_any_envelope_are_valid_http(ip, helo, mail_from, rcpts, hostname, queue_id):
    import httpx
    headers = spamengine.request_headers(cfg("http://127.0.0.1:1"), ip=ip, helo=helo, mail_from=mail_from,
                                         rcpts=rcpts, hostname=hostname, queue_id=queue_id)
    request = httpx.Request("POST", "http://127.0.0.1:1/checkv2", headers=headers, content=b"x")
    for name, value in request.headers.raw:
        assert not any(c < 0x20 or c == 0x7f for c in value)
    kept = [r for r in rcpts if re.sub(r"[\x00-\x1f\x7f]", "", r).strip()]
    assert len([v for k, v in headers if k == b"Rcpt"]) == len(kept)   # one Rcpt per recipient, none invented


async def test_ping(rspamd):
    assert await spamengine.ping(cfg(rspamd.url)) == ""
    assert await spamengine.ping(cfg("")) == "no spam engine configured"
    assert (await spamengine.ping(cfg("http://127.0.0.1:1"))).startswith("cannot reach rspamd")
    async with FakeRspamd(body=b"nope") as fake:
        assert await spamengine.ping(cfg(fake.url)) == "rspamd answered HTTP 200 'nope' to /ping"
    async with FakeRspamd(mode="hang") as fake:
        assert await spamengine.ping(cfg(fake.url, timeout=0.3)) == "rspamd did not answer within 0.3s"
