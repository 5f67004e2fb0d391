"""The composition root: config -> store -> workers -> SMTP -> HTTP, and a graceful shutdown."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import ssl
from typing import Any, Generator

import uvicorn

from mxd import keys
from mxd.api import httpconn, mcp
from mxd.api.app import create_app
from mxd.api.http import Context
from mxd.certs import acme
from mxd.certs.contexts import ServerTLS
from mxd.certs.http01 import ChallengeApp
from mxd.certs.renewal import CertificateRenewal
from mxd.config import Config, parse_hostport
from mxd.db import Database
from mxd.defences.gate import Gate
from mxd.delivery.scheduler import Scheduler
from mxd.pipeline import Pipeline
from mxd.report_reader import ReportReader
from mxd.resolver import make_resolver
from mxd.retention import RetentionSweeper
from mxd.smtpserver.mx import MxHandler, MxServer
from mxd.smtpserver.submission import SubmissionHandler, SubmissionServer
from mxd.store import open_store, tokens
from mxd.store.directory import Directory
from mxd.tls_reporter import TlsReporter
from mxd.webhook_sender import WebhookWorker
from mxd.workerpool import make_workers

log = logging.getLogger("mxd")


class StartupError(Exception):
    """mxd cannot start; the message is one line that says how to fix it."""


def bind_socket(listen: str, what: str, env: str) -> socket.socket:
    host, port = parse_hostport(listen, env)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)   # asyncio sets TCP_NODELAY only then
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = (f"run as root, or grant the capability: setcap cap_net_bind_service=+ep "
                f"$(readlink -f $(which python3)), or pick another port: {env}={host}:{port + 2500 if port < 1024 else port + 1}")
        if exc.errno == 98:
            hint = f"another program uses it (ss -ltnp 'sport = :{port}'); stop it or set {env}=HOST:PORT"
        raise StartupError(f"cannot listen on {host}:{port} for {what}: {exc.strerror}; {hint}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def http_config(cfg: Config, app: Any, tls: ssl.SSLContext | None = None) -> uvicorn.Config:
    """uvicorn's settings for the API. Proxy headers (X-Forwarded-For, -Proto) are read only from
    `trusted_proxies`: uvicorn's default believes any loopback peer, so anything on this host could pose
    as any client to the per-IP limits and the audit trail. The h11 protocol with read deadlines
    (mxd.api.httpconn) bounds what a silent or slow client holds. With `tls` (ServerTLS's "https"
    context, whose SNI callback serves the certificate loaded last) the server speaks HTTPS."""
    return uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=10,
                          http=httpconn.protocol(cfg.http_header_timeout),
                          timeout_keep_alive=cfg.http_keepalive_timeout,   # type: ignore[arg-type]
                          proxy_headers=bool(cfg.trusted_proxies), forwarded_allow_ips=list(cfg.trusted_proxies),
                          server_header=False,
                          ssl_context_factory=None if tls is None else (lambda _config, _default: tls))


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:   # the daemon owns the signals
        yield


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db: Database | None = None
        self.mx: MxServer | None = None
        self.gate: Gate | None = None
        self.pipeline: Pipeline | None = None
        self.scheduler: Scheduler | None = None
        self.webhooks: WebhookWorker | None = None
        self.retention: RetentionSweeper | None = None
        self.report_reader: ReportReader | None = None
        self.tls_reporter: TlsReporter | None = None
        self.workers: concurrent.futures.Executor | None = None
        self.submission: SubmissionServer | None = None
        self.http: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self.https: _Uvicorn | None = None
        self._https_task: asyncio.Task | None = None
        self.mcp: mcp.McpService | None = None
        self.tls: ServerTLS | None = None
        self._tls_watch: asyncio.Task | None = None
        self.renewal: CertificateRenewal | None = None
        self.acme_http: _Uvicorn | None = None
        self._acme_http_task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        cfg = self.cfg
        os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        # Bind first, so that a port problem is reported before anything else happens.
        mx_sock = bind_socket(cfg.mx_listen, "the MX", "MXD_MX_LISTEN") if cfg.mx_listen else None
        http_sock = bind_socket(cfg.http_listen, "the HTTP API", "MXD_HTTP_LISTEN")
        https_sock = bind_socket(cfg.https_listen, "HTTPS", "MXD_HTTPS_LISTEN") if cfg.https_listen else None
        sub_sock = bind_socket(cfg.submission_listen, "submission", "MXD_SUBMISSION_LISTEN") \
            if cfg.submission_listen else None
        subs_sock = bind_socket(cfg.submissions_listen, "submission over TLS", "MXD_SUBMISSIONS_LISTEN") \
            if cfg.submissions_listen else None
        acme_http_sock = bind_socket(cfg.acme_http_listen, "ACME HTTP-01 challenges", "MXD_ACME_HTTP_LISTEN") \
            if cfg.acme and cfg.acme_http_listen else None

        if not cfg.tls_cert:                       # a self-signed certificate until real files are configured
            keys.ensure_self_signed_cert(cfg.tls_cert_path, cfg.tls_key_path, cfg.hostname)
        self.tls = ServerTLS(cfg)                  # the certificate every listener presents, swapped without a restart
        try:
            self.tls.load(cfg.tls_cert_path, cfg.tls_key_path)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the certificate {cfg.tls_cert_path} with its key {cfg.tls_key_path}: {exc}") from None
        acme_pending = acme.Challenges()
        if cfg.acme:                               # the last ACME certificate, if any; else the above until one is issued
            issued = acme.current(acme.folder(cfg))
            if issued is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.tls.load(issued.path, issued.key_path)
            if cfg.acme_challenge == "tls-alpn-01":
                self.tls.challenge = acme.AlpnResponder(self.tls, acme_pending)

        self.db = await asyncio.get_running_loop().run_in_executor(None, open_store, cfg.effective_store_url)
        secret = await self.db.write(tokens.ensure_admin)
        if secret:
            print(f"mxd: first start: admin token (shown once, store it now): {secret}", flush=True)
        directory = Directory()
        await self.db.read(directory.refresh)
        resolver = make_resolver(cfg.dns_nameservers, cfg.dns_timeout)

        self.workers = make_workers(cfg, resolver)
        self.pipeline = Pipeline(cfg, self.db, self.workers, on_queued=lambda: self.scheduler.notify())
        self.pipeline.start()
        self.scheduler = Scheduler(cfg, self.db, resolver, on_local=self.pipeline.notify)
        self.scheduler.start()
        self.webhooks = WebhookWorker(cfg, self.db, resolver)
        self.webhooks.start()
        self.retention = RetentionSweeper(cfg, self.db)
        self.retention.start()
        self.report_reader = ReportReader(cfg, self.db)
        self.report_reader.start()

        def queued() -> None:
            self.scheduler.notify()
            self.pipeline.notify()
        if mx_sock is not None:
            self.gate = Gate(cfg, resolver)         # the MX's checks before the 250 (mxd.defences)
            self.mx = MxServer(cfg, MxHandler(cfg, self.db, directory, self.pipeline.notify, self.gate),
                               self.tls.context("mx"))
            await self.mx.start_on(mx_sock)
        self.submission = SubmissionServer(cfg, SubmissionHandler(cfg, self.db, self.pipeline.notify),
                                           self.tls.context("submission"))
        await self.submission.start_on(sub_sock, subs_sock)
        if cfg.tls_reports:                        # the daily SMTP TLS reports (RFC 8460)
            self.tls_reporter = TlsReporter(Context(cfg, self.db, directory, self.workers, queued, resolver))
            self.tls_reporter.start()
        app = create_app(Context(cfg, self.db, directory, self.workers, queued, resolver))
        self.mcp = await mcp.start(app)             # the MCP SDK's session manager, for the daemon's lifetime
        if https_sock is not None:                 # the same app over TLS: the API and the MTA-STS policy
            self.https = _Uvicorn(http_config(cfg, app, self.tls.context("https")))
            self._https_task = asyncio.get_running_loop().create_task(self.https.serve(sockets=[https_sock]))
            while not self.https.started and not self._https_task.done():
                await asyncio.sleep(0.01)
            if self._https_task.done():
                raise StartupError(f"the HTTPS listener on {cfg.https_listen} did not start: "
                                   f"{self._https_task.exception()}")
        self.http = _Uvicorn(http_config(cfg, app))
        self._http_task = asyncio.get_running_loop().create_task(self.http.serve(sockets=[http_sock]))
        while not self.http.started and not self._http_task.done():
            await asyncio.sleep(0.01)
        if cfg.acme:
            self.renewal = CertificateRenewal(cfg, self.db, self.tls, acme.Issuer(cfg, acme_pending, self.tls))
            self.renewal.start()
            if acme_http_sock is not None:
                https_port = parse_hostport(cfg.https_listen, "MXD_HTTPS_LISTEN")[1] if cfg.https_listen else 443
                self.acme_http = _Uvicorn(http_config(cfg, ChallengeApp(acme_pending, cfg.hostname, https_port)))
                self._acme_http_task = asyncio.get_running_loop().create_task(
                    self.acme_http.serve(sockets=[acme_http_sock]))
        elif cfg.tls_watch_interval > 0:
            self._tls_watch = asyncio.get_running_loop().create_task(self.tls.watch(cfg.tls_watch_interval))
        log.info("mxd started: MX %s, HTTP %s, store %s", cfg.mx_listen or "off", cfg.http_listen,
                 cfg.effective_store_url.split("@")[-1])

    def reload(self) -> None:
        """SIGHUP: load the certificate files again (a renewal by certbot or another tool); with ACME, look
        again at the names and the certificate at once (a domain's MTA-STS turned on)."""
        if self.renewal is not None:
            self.renewal.notify()
        elif self.tls is not None:
            self.tls.reload(force=True)

    def renew_certificate(self) -> None:
        """Renew the ACME certificate now, whatever its age (retried with backoff until it succeeds)."""
        if self.renewal is not None:
            self.renewal.renew_now()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        if self._tls_watch:
            self._tls_watch.cancel()
        if self.renewal:
            await self.renewal.stop()
        if self.acme_http and self._acme_http_task:
            self.acme_http.should_exit = True
            await self._acme_http_task
        if self.submission:
            await self.submission.stop()
        if self.mx:
            await self.mx.stop(grace=30.0)
        if self.gate:
            self.gate.close()
        for server, task in ((self.http, self._http_task), (self.https, self._https_task)):
            if server and task:
                server.should_exit = True
        for task in (self._http_task, self._https_task):
            if task:
                await task
        if self.mcp:
            await self.mcp.stop()
        if self.tls_reporter:
            await self.tls_reporter.stop()
        if self.scheduler:
            await self.scheduler.stop()
        if self.webhooks:
            await self.webhooks.stop()
        if self.retention:
            await self.retention.stop()
        if self.report_reader:
            await self.report_reader.stop()
        if self.pipeline:
            await self.pipeline.stop()
        if self.workers:
            self.workers.shutdown(wait=True, cancel_futures=True)
        if self.db:
            self.db.close()
        log.info("mxd stopped")


async def serve(cfg: Config) -> None:
    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    loop.add_signal_handler(signal.SIGUSR1, daemon.renew_certificate)   # ACME: renew now
    try:
        await daemon.start()
        print(f"mxd: MX on {cfg.mx_listen or 'off'}, submission on {cfg.submission_listen or 'off'} and "
              f"{cfg.submissions_listen or 'off'} (TLS), HTTP on http://{cfg.http_listen}"
              f"{f', HTTPS on https://{cfg.https_listen}' if cfg.https_listen else ''}, data in {cfg.data_dir}",
              flush=True)
        await daemon.wait()
    finally:
        await daemon.stop()
