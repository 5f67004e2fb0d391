"""mxd.smtpserver rests on aiosmtpd's internals (the DATA reader, path parsing, the session and envelope
factories, the EHLO hook, the AUTH exchanges, STARTTLS, the connection callbacks): the installed aiosmtpd
must be the pinned minor version, and everything overridden or used must still be there with the same
shape, so that an upgrade that breaks the listeners fails here, in one obvious place. Then what the base
gives both listeners: one EHLO reply, typed session and envelope state, and the submission's AUTH check
awaited off the event loop."""
from __future__ import annotations

import asyncio
import base64
import inspect
import re
import socket
import threading
import tomllib
from asyncio import sslproto
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosmtpd
import pytest
from aiosmtpd import smtp as aiosmtp
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mxd.config import Config
from mxd.smtpserver import submission
from mxd.smtpserver.base import Listener, ListenerSMTP
from mxd.smtpserver.mx import MxEnvelope, MxSession, MxSMTP
from mxd.smtpserver.submission import Credentials, SubmissionServer, SubmissionSession, SubmissionSMTP
from mxd.store.tokens import Principal

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
PIN = (1, 4)                                           # the minor version whose internals smtpserver/ uses


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# ---------------------------------------------------------------------------------------------- the pin
def test_the_pin_in_pyproject_is_one_minor_version():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.split(">")[0].split("<")[0].split("=")[0].strip() == "aiosmtpd"]
    assert spec.replace(" ", "") == "aiosmtpd>=1.4.6,<1.5"


def test_installed_aiosmtpd_is_the_pinned_minor_version():
    installed = _version(aiosmtpd.__version__)
    assert installed >= (1, 4, 6), f"aiosmtpd {aiosmtpd.__version__}: 1.4.6 fixed STARTTLS command injection"
    assert installed[:2] == PIN, (f"aiosmtpd {aiosmtpd.__version__} is outside the pin (>=1.4.6,<1.5): "
                                  "check every internal mxd.smtpserver overrides before moving the pin")


# -------------------------------------------------------------------------- the internals relied upon
def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


OVERRIDDEN = {                  # method of aiosmtpd's SMTP: its parameters, as mxd's overrides take them
    "_getaddr": ["self", "arg"],                                    # fast.py
    "smtp_DATA": ["self", "arg"],                                   # fast.py
    "smtp_RCPT": ["self", "arg"],                                   # mx.py
    "smtp_AUTH": ["self", "arg"],                                   # mx.py, submission.py
    "smtp_STARTTLS": ["self", "arg"],                               # base.py
    "connection_made": ["self", "transport"],                       # base.py
    "connection_lost": ["self", "error"],
    "eof_received": ["self"],
    "handle_exception": ["self", "error"],
    "push": ["self", "status"],
    "_create_session": ["self"],
    "_create_envelope": ["self"],
    "_authenticate": ["self", "mechanism", "auth_data"],            # submission.py
    "auth_PLAIN": ["self", "_", "args"],
    "auth_LOGIN": ["self", "_", "args"],
}

CALLED = {                      # used, not overridden
    "_call_handler_hook": ["self", "command", "args"],
    "_set_post_data_state": ["self"],
    "check_helo_needed": ["self", "helo"],
    "check_auth_needed": ["self", "caller_method"],
}


@pytest.mark.parametrize("name,params", sorted({**OVERRIDDEN, **CALLED}.items()))
def test_aiosmtpd_methods_keep_their_signatures(name, params):
    method = getattr(SMTP, name)
    assert _params(method) == params
    asyncs = {"smtp_DATA", "smtp_RCPT", "smtp_AUTH", "smtp_STARTTLS", "handle_exception", "push",
              "auth_PLAIN", "auth_LOGIN", "_call_handler_hook", "check_helo_needed", "check_auth_needed"}
    assert inspect.iscoroutinefunction(method) == (name in asyncs)


def test_aiosmtpd_calls_the_hooks_we_override_where_we_rely_on_it():
    src = {name: inspect.getsource(getattr(SMTP, name)) for name in
           ("connection_made", "_set_post_data_state", "smtp_EHLO", "auth_PLAIN", "auth_LOGIN", "__init__")}
    assert "self._create_session()" in src["connection_made"]
    assert "self._create_envelope()" in src["_set_post_data_state"]
    # the EHLO reply: aiosmtpd's lines so far handed to the hook, which replaces them
    assert 'self._ehlo_hook_ver == "new"' in src["smtp_EHLO"]
    assert 'self._call_handler_hook("EHLO", hostname, response)' in src["smtp_EHLO"]
    assert "self._handle_hooks" in src["__init__"] and "self._ehlo_hook_ver" in src["__init__"]
    # the AUTH exchanges return what _authenticate returns, unchanged (submission awaits it afterwards)
    assert 'return self._authenticate("PLAIN", LoginPassword(login, password))' in src["auth_PLAIN"]
    assert 'return self._authenticate("LOGIN", LoginPassword(login, password))' in src["auth_LOGIN"]
    # the builtin auth_* methods are looked up on the instance, so a subclass's override is the one called
    assert "inspect.getmembers(obj)" in src["__init__"] and "for obj in (self, handler)" in src["__init__"]
    assert "auth_result = await auth_method.method(self, args)" in inspect.getsource(SMTP.smtp_AUTH)
    assert hasattr(aiosmtp, "TLSSetupException") and hasattr(aiosmtp, "MISSING")
    assert set(inspect.signature(AuthResult).parameters) >= {"success", "handled", "message", "auth_data"}
    assert list(LoginPassword._fields) == ["login", "password"]


def test_aiosmtpd_instance_attributes_we_use_exist():
    async def build() -> SMTP:
        return SMTP(object(), hostname="h.test")
    server = asyncio.run(build())
    for name in ("_handle_hooks", "_ehlo_hook_ver", "_auth_methods", "_tls_protocol", "_original_transport",
                 "tls_context", "transport", "session", "envelope", "event_handler", "data_size_limit",
                 "line_length_limit", "loop", "_handler_coroutine", "_timeout_handle"):
        assert hasattr(server, name), name
    assert isinstance(server._handle_hooks, dict) and server._ehlo_hook_ver is None
    assert {"PLAIN", "LOGIN"} <= set(server._auth_methods)
    # _reader and _writer (fast.py, base.py) are set once the client connects
    src = inspect.getsource(SMTP._cb_client_connected)
    assert "self._reader = reader" in src and "self._writer = writer" in src


def test_stdlib_internals_the_tls_layer_uses():
    """HalfCloseSSLProtocol (base.py) and the DATA reader (fast.py) lean on asyncio's private parts."""
    for name in ("eof_received", "_call_eof_received", "_start_shutdown", "_do_read"):
        assert callable(getattr(sslproto.SSLProtocol, name)), name
    assert sslproto.SSLProtocolState.WRAPPED
    src = inspect.getsource(sslproto.SSLProtocol.__init__)
    assert "self._app_transport" in src and "self._state" in src and "self._eof_received" in src
    assert "self._limit" in inspect.getsource(asyncio.StreamReader.__init__)
    assert "consumed" in inspect.getsource(asyncio.LimitOverrunError)


def test_our_overrides_take_aiosmtpd_signatures():
    for cls in (ListenerSMTP, MxSMTP, SubmissionSMTP):
        for name, params in OVERRIDDEN.items():
            ours = getattr(cls, name)
            if ours is not getattr(SMTP, name):
                assert _params(ours) == params, f"{cls.__name__}.{name}"


# ------------------------------------------------------------------------------------ what the base gives
def _cfg() -> Config:
    return Config(hostname="mx.base.test")


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[type, type, str]] = []

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.seen.append((type(session), type(envelope), address))
        envelope.mail_from = address
        return "250 OK"


def _talk(port: int, lines: list[bytes]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        replies = [reader.readline().decode()]
        for line in lines:
            conn.sendall(line + b"\r\n")
            reply = [reader.readline().decode()]
            while reply[-1][3:4] == "-":
                reply.append(reader.readline().decode())
            replies.append("".join(reply))
        return replies


def _serve(listener: Listener, protocol, lines: list[bytes]) -> list[str]:
    async def run() -> list[str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await listener.listen(protocol, sock)
        try:
            return await asyncio.to_thread(_talk, listener.port, lines)
        finally:
            await listener.stop(grace=0.5)
    return asyncio.run(run())


def test_the_mx_ehlo_reply_and_typed_envelope():
    handler = _Recorder()
    listener = Listener(_cfg())
    replies = _serve(listener, lambda: MxSMTP(handler, listener, ident="mxd ESMTP"),
                     [b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RSET", b"MAIL FROM:<c@d.test>", b"QUIT"])
    assert replies[0].startswith("220 mx.base.test mxd ESMTP")
    assert replies[1].splitlines() == ["250-mx.base.test", "250-SIZE 26214400", "250-8BITMIME", "250-SMTPUTF8",
                                       "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]
    assert handler.seen == [(MxSession, MxEnvelope, "a@b.test"), (MxSession, MxEnvelope, "c@d.test")]
    assert replies[-1].startswith("221")
    assert not listener.live and listener.limits.count == 0


def test_mx_envelope_state_is_declared_and_fresh_per_transaction():
    first, second = MxEnvelope(), MxEnvelope()
    assert isinstance(first, Envelope) and first.mxd_rcpts == [] and first.mxd_rcpts is not second.mxd_rcpts
    assert "mxd_rcpts" in MxEnvelope.__annotations__
    assert "send_as" in SubmissionSession.__annotations__


class _ReadPool:
    """Stands in for mxd.db.Database's read pool: records the thread every read runs on."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="read-pool")
        self.threads: list[str] = []

    async def read(self, fn, *args):
        def job():
            self.threads.append(threading.current_thread().name)
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, job)


def _plain(user: str, secret: str) -> str:
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


def test_submission_auth_is_checked_on_the_read_pool(monkeypatch):
    alice = Principal("tok_1", "t", frozenset({"send"}), None)
    looked_up: list[tuple[str, str]] = []

    def sender(secret: str, address: str):
        looked_up.append((secret, address))
        return alice if secret == "good" else None

    monkeypatch.setattr(submission, "_sender", sender)
    monkeypatch.setattr(submission, "may_send_as", lambda principal, address: address == "alice@sub.test")
    monkeypatch.setattr(submission.policy, "sender_rule", lambda address: None)    # no outbound allow-list
    db = _ReadPool()
    cfg = _cfg()
    handler = submission.SubmissionHandler(cfg, db, lambda: None)

    async def run():
        server = SubmissionServer(cfg, handler, None)
        smtp = SubmissionSMTP(handler, server, ident="mxd ESMTP submission")
        smtp.session = smtp._create_session()
        smtp.envelope = smtp._create_envelope()
        assert isinstance(smtp.session, SubmissionSession)
        credentials = LoginPassword(b"a", b"b")
        assert smtp._authenticate("PLAIN", credentials) == Credentials("PLAIN", credentials)
        loop_thread = threading.current_thread().name
        good = await smtp.auth_PLAIN(smtp, ["PLAIN", _plain("Alice@sub.test", "good")])
        bad = await smtp.auth_PLAIN(smtp, ["PLAIN", _plain("alice@sub.test", "wrong")])
        nobody = await smtp.auth_PLAIN(smtp, ["PLAIN", _plain("not an address", "good")])
        user = smtp.auth_user
        session = smtp.session
        session.auth_data = good.auth_data
        allowed = await handler.handle_MAIL(smtp, session, smtp.envelope, "alice@sub.test", [])
        again = await handler.handle_MAIL(smtp, session, Envelope(), "alice@sub.test", [])
        refused = await handler.handle_MAIL(smtp, session, Envelope(), "bob@sub.test", [])
        return loop_thread, good, bad, nobody, user, allowed, again, refused, session.send_as

    loop_thread, good, bad, nobody, user, allowed, again, refused, send_as = asyncio.run(run())
    assert good == AuthResult(success=True, auth_data=alice)
    assert bad == AuthResult(success=False, handled=False) == nobody    # aiosmtpd answers 535 5.7.8
    assert user == "not an address"
    assert looked_up == [("good", "alice@sub.test"), ("wrong", "alice@sub.test")]
    assert (allowed, again) == ("250 2.1.0 Sender OK", "250 2.1.0 Sender OK")
    assert refused == submission.NOT_ALLOWED
    assert send_as == {"alice@sub.test": True, "bob@sub.test": False}
    assert len(db.threads) == 4 and all(name.startswith("read-pool") for name in db.threads)
    assert loop_thread not in db.threads
    db.pool.shutdown()
