"""A private rspamd (Debian's `rspamd` 3.4) as a test peer: the spam engine mxd asks before the 250.

Each RspamdPeer owns its config, run, log and database directories under `workdir`, runs one normal worker
(the /checkv2 scanner) on 127.0.0.1:port and one controller on another port, asks DNS only the nameserver
it is given (a loopback DNSServer: it never asks the internet), has fuzzy checks off and the http_headers
module on (so it takes mxd's SPF/DKIM/DMARC results from request headers). As root it runs as _rspamd.

A cold start compiles regexp databases for ~13 s; a start with those files already in DBDIR takes ~0.8 s.
They are kept in CACHE (`$MXD_TEST_CACHE/rspamd`, default /var/cache/mxd-tests/rspamd): each peer's DBDIR
is seeded from it, and what a peer compiled is copied back when it stops. Peers never share a DBDIR.

The session fixture `rspamd` starts one peer (with its own DNSServer) for the whole run and yields it:
`rspamd.url`, `rspamd.stop()`, `rspamd.start()`, `with rspamd.stopped(): ...` (restarted afterwards).
It skips when rspamd is not installed, unless the CI environment variable is set: then it fails.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

from tests.support.peers.files import traversable_by_all

RSPAMD = shutil.which("rspamd") or ("/usr/bin/rspamd" if os.path.exists("/usr/bin/rspamd") else None)
CACHE = Path(os.environ.get("MXD_TEST_CACHE", "/var/cache/mxd-tests")) / "rspamd"
USER = "_rspamd"
CACHED = ("*.hsmp", "*.hsmc", "symbols.cache")   # compiled hyperscan databases and the symbols cache

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "console";
    level = "{log_level}";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    .include "$CONFDIR/worker-normal.inc"
    count = {workers};
}}
worker "controller" {{
    bind_socket = "127.0.0.1:{controller_port}";
    .include "$CONFDIR/worker-controller.inc"
    count = 1;
}}
"""


def available() -> bool:
    return RSPAMD is not None


def skip_unless_available() -> None:
    """pytest.skip with the reason when rspamd is missing; under CI (the CI variable set) fail instead."""
    import pytest
    if available():
        return
    why = "rspamd is not installed (apt-get install rspamd; see tests/run.sh)"
    if os.environ.get("CI"):
        pytest.fail(why + ", and CI requires the rspamd tests to run")
    pytest.skip(why)


class RspamdError(RuntimeError):
    pass


class RspamdPeer:
    def __init__(self, workdir: Path, port: int, controller_port: int, nameserver: str, *,
                 cache: Path | None = CACHE, log_level: str = "warning", workers: int = 1) -> None:
        """nameserver: "127.0.0.1:PORT", the only DNS server rspamd asks; workers: normal (scanner) processes,
        each single-threaded (~260 MB each)."""
        self.workdir = Path(workdir).resolve()
        self.port, self.controller_port = port, controller_port
        self.nameserver = nameserver
        self.cache = cache
        self.log_level = log_level
        self.workers = workers
        self.db_dir = self.workdir / "db"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "rspamd.log"

    # ------------------------------------------------------------ config
    def write_config(self) -> None:
        local = self.workdir / "local.d"
        local.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rspamd.conf").write_text(_CONF.format(
            port=self.port, controller_port=self.controller_port, log_level=self.log_level,
            workers=self.workers))
        (local / "options.inc").write_text(f'dns {{ nameserver = ["{self.nameserver}"]; timeout = 1s; '
                                           f'retransmits = 1; }}\n')
        (local / "fuzzy_check.conf").write_text("enabled = false;\n")
        (local / "http_headers.conf").write_text("enabled = true;\n")
        for sub in ("db", "run", "log"):
            (self.workdir / sub).mkdir(exist_ok=True)
        self._seed_db()
        if os.geteuid() == 0:
            traversable_by_all(self.workdir)
            for sub in ("db", "run", "log"):
                for path in [self.workdir / sub, *(self.workdir / sub).iterdir()]:
                    shutil.chown(path, USER, USER)

    def _seed_db(self) -> None:
        if self.cache is None or not self.cache.is_dir():
            return
        for pattern in CACHED:
            for src in self.cache.glob(pattern):
                dst = self.db_dir / src.name
                if not dst.exists():
                    shutil.copyfile(src, dst)

    def _save_db(self) -> None:
        """Copy what this peer compiled into the cache (atomically, under a lock) for the next start."""
        if self.cache is None:
            return
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            with open(self.cache / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                for pattern in CACHED:
                    for src in self.db_dir.glob(pattern):
                        dst = self.cache / src.name
                        if dst.exists() and pattern != "symbols.cache":
                            continue
                        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp.")
                        os.close(fd)
                        shutil.copyfile(src, tmp)
                        os.replace(tmp, dst)
        except OSError:
            pass                                # a cache that cannot be written only costs time

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 120.0) -> "RspamdPeer":
        if not available():
            raise RspamdError("rspamd is not installed")
        if self.proc is not None:
            return self
        self.write_config()
        args = [RSPAMD, "-f", "-c", str(self.workdir / "rspamd.conf"),
                "--var", f"LOCAL_CONFDIR={self.workdir}", "--var", f"DBDIR={self.db_dir}",
                "--var", f"RUNDIR={self.workdir / 'run'}", "--var", f"LOGDIR={self.workdir / 'log'}"]
        if os.geteuid() == 0:
            args[2:2] = ["-u", USER, "-g", USER]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise RspamdError(f"rspamd exited {code}:\n{self.log()[-3000:]}")
            if self.ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RspamdError(f"rspamd did not answer /ping within {timeout:g}s:\n{self.log()[-3000:]}")

    def ping(self) -> bool:
        try:
            return httpx.get(self.url + "/ping", timeout=1, trust_env=False).text.strip() == "pong"
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (rspamd stops its workers and exits in ~1.5 s), SIGKILL to its process group after timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reap()
        self._save_db()

    def _reap(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @contextlib.contextmanager
    def stopped(self) -> Iterator["RspamdPeer"]:
        """rspamd down for the duration of the block, started again (same port) afterwards."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "RspamdPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_rspamd(workdir: Path, nameserver: str | None = None, **kwargs) -> Iterator[RspamdPeer]:
    """A started peer on free loopback ports; with no nameserver, an empty loopback DNSServer (NXDOMAIN
    for every name) of its own, reachable as `peer.dns`."""
    from tests.support.daemon import free_port
    from tests.support.dnsserver import DNSServer
    with contextlib.ExitStack() as stack:
        dns = None
        if nameserver is None:
            dns = stack.enter_context(DNSServer({}))
            nameserver = dns.nameserver
        peer = RspamdPeer(workdir, free_port(), free_port(), nameserver, **kwargs)
        peer.dns = dns                           # type: ignore[attr-defined]
        stack.enter_context(peer)
        yield peer


_session: dict = {"users": 0, "stack": None, "peer": None}


def _fixture():
    import pytest

    @pytest.fixture(scope="session")
    def rspamd(tmp_path_factory) -> Iterator[RspamdPeer]:
        """One rspamd for the session (import into a test module); a test that stops it uses
        `with rspamd.stopped():`, which starts it again. pytest makes one session fixture per module that
        imports it: they share one peer, stopped when the last is torn down."""
        skip_unless_available()
        if _session["peer"] is None:
            stack = contextlib.ExitStack()
            _session["peer"] = stack.enter_context(running_rspamd(tmp_path_factory.mktemp("rspamd")))
            _session["stack"] = stack
        _session["users"] += 1
        try:
            yield _session["peer"]
        finally:
            _session["users"] -= 1
            if _session["users"] == 0:
                stack, _session["stack"], _session["peer"] = _session["stack"], None, None
                stack.close()
    return rspamd


try:
    rspamd = _fixture()
except ImportError:                      # pytest missing: the class is still usable (bench/rspamd_share)
    pass
