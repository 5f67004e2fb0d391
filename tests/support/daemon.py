"""Run a real `mxd` daemon in a subprocess for end-to-end tests."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from tests.support.apicalls import ApiCalls


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll fn until it returns something truthy or the time is up; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_daemon(data_dir: Path, mailboxes: tuple[str, ...] | list[str] = (), ready: tuple[str, ...] | list[str] = (),
                 **kwargs: Any) -> "MxdProcess":
    """A started daemon (`mxd init`, then `mxd serve`; MxdProcess's keyword arguments) with `mailboxes`
    created and the domains in `ready` marked ready for outbound."""
    proc = MxdProcess(data_dir, **kwargs)
    proc.init()
    proc.start()
    try:
        for address in mailboxes:
            r = proc.api("POST", "/api/mailboxes", json={"address": address})
            assert r.status_code == 201, r.text
        for domain in ready:
            r = proc.api("PUT", f"/api/domains/{domain}/readiness", json={"ready": True})
            assert r.status_code == 200, r.text
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running_daemon(data_dir: Path, **kwargs: Any) -> Iterator["MxdProcess"]:
    """`start_daemon`, stopped afterwards."""
    proc = start_daemon(data_dir, **kwargs)
    try:
        yield proc
    finally:
        proc.stop()


class MxdProcess(ApiCalls):
    def __init__(self, data_dir: Path, *, domains: list[str] = ("example.test",), host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, hostname: str = "mx.example.test") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.mx_port = free_port(host)
        self.http_port = free_port("127.0.0.1")
        self.submission_port = free_port("127.0.0.1")
        self.submissions_port = free_port("127.0.0.1")
        self.env = dict(os.environ)
        self.env.update({
            "MXD_DATA_DIR": str(self.data_dir), "MXD_HOSTNAME": hostname,
            "MXD_MX_LISTEN": f"{host}:{self.mx_port}", "MXD_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "MXD_SUBMISSION_LISTEN": f"127.0.0.1:{self.submission_port}",
            "MXD_SUBMISSIONS_LISTEN": f"127.0.0.1:{self.submissions_port}",
            "MXD_DNS_NAMESERVERS": "127.0.0.1:1", "MXD_DNS_TIMEOUT": "0.5", "MXD_LOG_LEVEL": "WARNING",
            "MXD_OUTBOUND_ALLOW_PRIVATE": "true",          # every test MX is on loopback
        })
        self.env.update(env or {})
        self.domains = list(domains)
        self.proc: subprocess.Popen | None = None
        self.admin_token = ""
        self.init_output: dict[str, Any] = {}

    # ------------------------------------------------------------ lifecycle
    def init(self) -> dict[str, Any]:
        args = [sys.executable, "-m", "mxd.cli", "init", "--json"]
        for d in self.domains:
            args += ["--domain", d]
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        self.init_output = json.loads(out.stdout)
        if self.init_output["admin_token"]:
            self.admin_token = self.init_output["admin_token"]
        return self.init_output

    def start(self, timeout: float = 20.0) -> "MxdProcess":
        self.log = open(self.data_dir / "mxd.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mxd.cli", "serve"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mxd exited: {(self.data_dir / 'mxd.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url("/api/health"), timeout=1).status_code == 200:
                    with socket.create_connection((self.host, self.mx_port), timeout=1):
                        return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError("mxd did not start in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self.log.close()
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    # ------------------------------------------------------------ API helpers
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET without a token."""
        return httpx.get(self.url(path), timeout=kwargs.pop("timeout", 30), **kwargs)

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"Bearer {token or self.admin_token}"
        return httpx.request(method, self.url(path), headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def send_inbound(self, mail_from: str, to: str, subject: str, text: str) -> None:
        """One plain message over SMTP to the daemon's MX."""
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = mail_from, to, subject
        msg.set_content(text)
        with smtplib.SMTP(self.host, self.mx_port, timeout=30) as smtp:
            smtp.send_message(msg)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one SQL statement on the daemon's SQLite store from outside (committed); its rows."""
        con = sqlite3.connect(self.data_dir / "mxd.db", timeout=60)
        try:
            rows = con.execute(statement, params).fetchall()
            con.commit()
            return rows
        finally:
            con.close()

    def wait_messages(self, count: int, mailbox: str | None = None, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(mailbox)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
