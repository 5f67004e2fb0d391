"""A private Exim 4 instance as a test peer: a sender relaying to mxd, and a receiving MX that verifies DKIM.

Debian's exim4 packages conflict with postfix, so they are never installed: `fetch()` downloads them with
`apt-get download` (plus libidn12, which the binary links and a Postfix machine may lack), unpacks them with
`dpkg -x` into CACHE (`$MXD_TEST_CACHE/exim`, default /var/cache/mxd-tests/exim) and builds an ld.so.cache
that also covers the unpacked libraries; later calls reuse the cache. Exim re-executes itself from its
compiled-in path /usr/sbin/exim4, so every Exim command runs inside `unshare -m` with the unpacked /usr/sbin,
that ld.so.cache, the peer's own resolv.conf and a passwd/group that name Exim's compiled-in user Debian-exim
bind-mounted over the real ones: the mounts exist only in that namespace and Postfix is untouched (the
unpacked /usr/sbin hides the real one there; Exim needs nothing else).

Each EximPeer owns its config, spool, log and Maildir under `workdir`, listens on listen_host:listen_port,
relays each of `routes`' domains to a fixed host:port (`Route`), is the final destination of `local_domains`
(every local part lands in one Maildir, `workdir/mail`), and adds `X-Exim-DKIM: <signer> <algorithm>
<status>` for each DKIM signature it verifies on mail it receives. Its resolver is `nameserver` on port 53
(the C library resolver knows no other port): see `dns_server_on_port_53`. Exim is run as root with a
private `-C` config, so it drops privilege to nobody:nogroup at once and writes `workdir/log/mainlog`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from tests.support.peers.files import traversable_by_all
from tests.support.smtp import greets

CACHE = Path(os.environ.get("MXD_TEST_CACHE", "/var/cache/mxd-tests")) / "exim"
PACKAGES = ("exim4-daemon-light", "exim4-base", "exim4-config", "libidn12")
NOBODY, NOGROUP = "nobody", "nogroup"
EXIM_USER = "Debian-exim"                  # compiled into Debian's binary


class EximUnavailable(RuntimeError):
    """The packages cannot be fetched or unpacked here (the reason is the message)."""


class EximError(RuntimeError):
    pass


# ---------------------------------------------------------------- fetching and unpacking
def _libdirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.glob("usr/lib/**/*.so*")})


def fetch(cache: Path = CACHE) -> Path:
    """The unpacked root (CACHE/root), downloading and unpacking the packages first if needed.

    Idempotent and safe to call from several processes at once (a lock file); an `apt-get update` is tried
    once when the download fails (a fresh machine has no package lists). Raises EximUnavailable."""
    root = cache / "root"
    if (root / "usr/sbin/exim4").exists() and (cache / "ld.so.cache").exists() and not _stale(cache):
        return root
    for tool in ("apt-get", "dpkg", "ldconfig", "unshare"):
        if not shutil.which(tool):
            raise EximUnavailable(f"{tool} is not available")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "usr/sbin/exim4").exists():
            debs = cache / "debs"
            debs.mkdir(exist_ok=True)
            if not all(list(debs.glob(f"{name}_*.deb")) for name in PACKAGES):
                _download(debs)
            staging = Path(tempfile.mkdtemp(prefix="root.", dir=cache))
            for deb in sorted(debs.glob("*.deb")):
                out = subprocess.run(["dpkg", "-x", str(deb), str(staging)], capture_output=True, text=True)
                if out.returncode != 0:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise EximUnavailable(f"dpkg -x {deb.name} failed: {out.stderr.strip()}")
            shutil.rmtree(root, ignore_errors=True)
            staging.chmod(0o755)
            staging.rename(root)
        if not (cache / "ld.so.cache").exists() or _stale(cache):
            _build_ld_cache(cache, root)
    return root


def _download(debs: Path) -> None:
    def download() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", "-q", *PACKAGES], cwd=debs, capture_output=True,
                              text=True, timeout=300)
    out = download()
    if out.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        out = download()
    if out.returncode != 0:
        raise EximUnavailable(f"apt-get download {' '.join(PACKAGES)} failed: {out.stderr.strip()[-500:]}")


def _stale(cache: Path) -> bool:
    """Our ld.so.cache copies the system's: rebuild it when the system's changed after it."""
    try:
        return Path("/etc/ld.so.cache").stat().st_mtime > (cache / "ld.so.cache").stat().st_mtime
    except OSError:
        return True


def _build_ld_cache(cache: Path, root: Path) -> None:
    conf = cache / "ld.so.conf"
    conf.write_text("".join(f"{d}\n" for d in _libdirs(root)) + "include /etc/ld.so.conf.d/*.conf\n")
    tmp = cache / "ld.so.cache.new"
    out = subprocess.run(["ldconfig", "-X", "-C", str(tmp), "-f", str(conf)], capture_output=True, text=True)
    if out.returncode != 0:
        raise EximUnavailable(f"ldconfig failed: {out.stderr.strip()}")
    tmp.rename(cache / "ld.so.cache")


def available() -> tuple[bool, str]:
    """(True, "") when Exim can run here, else (False, why)."""
    if os.geteuid() != 0:
        return False, "a private Exim instance needs root (mount namespaces, dropping to nobody)"
    try:
        fetch()
    except (EximUnavailable, OSError, subprocess.SubprocessError) as e:
        return False, f"exim4 cannot be fetched and unpacked: {e}"
    return True, ""


def skip_unless_available() -> None:
    """pytest.skip (with the reason) unless the unpacked Exim can be run here."""
    import pytest
    ok, why = available()
    if not ok:
        pytest.skip(why)


# ---------------------------------------------------------------- a DNS server Exim can ask
def dns_server_on_port_53(zone: Mapping[str, Any] | None = None) -> Any:
    """A started tests.support.dnsserver.DNSServer on port 53 of a free address in 127.0.53.0/24.

    Exim (the C library resolver) asks port 53 only; a fresh address keeps parallel test runs apart.
    Pass `.host` to EximPeer(nameserver=...) and `.nameserver` to mxd (MXD_DNS_NAMESERVERS)."""
    from tests.support.dnsserver import DNSServer
    start = os.getpid() % 200
    for i in range(200):
        host = f"127.0.53.{(start + i) % 250 + 2}"
        try:
            return DNSServer(zone, host=host, port=53).start()
        except OSError:
            continue
    raise OSError("no free 127.0.53.x:53 for a DNS server")


# ---------------------------------------------------------------- the peer
@dataclass(frozen=True)
class Route:
    """Relay a domain to host:port; tls=False never tries STARTTLS (so a proxy can read the session)."""
    host: str
    port: int
    tls: bool = True


_CONFIG = """\
# Written by tests/support/peers/exim.py for one test peer.
primary_hostname = {hostname}
qualify_domain = {qualify_domain}
exim_user = {user}
exim_group = {group}
never_users =
trusted_users = root
keep_environment =
spool_directory = {spool}
log_file_path = {log_dir}/%slog
pid_file_path = {workdir}/exim.pid
log_selector = +smtp_confirmation +subject +outgoing_port +incoming_port +received_recipients \
  +smtp_protocol_error +smtp_syntax_error +deliver_time +delivery_size +pipelining +tls_peerdn
local_interfaces = <; {listen_host}
daemon_smtp_ports = {listen_port}
domainlist local_domains = {local_domains}
domainlist relay_to_domains = {relay_domains}
hostlist relay_from_hosts = 127.0.0.0/8
host_lookup =
rfc1413_hosts =
dns_retrans = 1s
dns_retry = 2
tls_advertise_hosts = {tls_advertise}
message_size_limit = 50M
smtp_accept_max = 50
remote_max_parallel = 4
ignore_bounce_errors_after = 1m
timeout_frozen_after = 1h
dkim_verify_signers = $dkim_signers
acl_smtp_rcpt = acl_rcpt
acl_smtp_dkim = acl_dkim

begin acl

acl_rcpt:
  accept  domains = +local_domains
  accept  domains = +relay_to_domains
          hosts = +relay_from_hosts
  deny    message = relay not permitted

acl_dkim:
  warn    add_header = X-Exim-DKIM: $dkim_cur_signer $dkim_algo $dkim_verify_status
  accept

begin routers

{route_routers}
local_maildir:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports

{route_transports}
maildir:
  driver = appendfile
  directory = {mail_dir}
  maildir_format
  create_directory
  user = {user}
  group = {group}
  mode = 0600
  delivery_date_add
  envelope_to_add
  return_path_add

begin retry

*  *  F,1h,1s

begin rewrite
"""

_ROUTER = """\
route_{n}:
  driver = manualroute
  domains = {domain}
  route_list = * {host}
  self = send
  transport = smtp_{n}
  no_more

"""

_TRANSPORT = """\
smtp_{n}:
  driver = smtp
  port = {port}
  hosts_avoid_tls = {avoid_tls}
  connect_timeout = 5s
  command_timeout = 20s
  data_timeout = 20s
  final_timeout = 20s

"""


class EximPeer:
    def __init__(self, workdir: Path, listen_port: int, *, listen_host: str = "127.0.0.6",
                 hostname: str = "mx.exim.test", local_domains: list[str] | tuple[str, ...] = ("exim.test",),
                 routes: Mapping[str, Route | str] | None = None, nameserver: str = "127.0.0.1",
                 queue_interval: str = "10s", tls: bool = True) -> None:
        """routes: {"domain": Route(host, port, tls) or "host:port"}; nameserver: an IPv4 address whose
        port 53 answers (dns_server_on_port_53); tls: offer STARTTLS (Exim's own self-signed certificate)."""
        self.workdir = Path(workdir).resolve()
        self.listen_port = listen_port
        self.listen_host = listen_host
        self.hostname = hostname
        self.local_domains = list(local_domains)
        self.routes: dict[str, Route] = {}
        for domain, r in (routes or {}).items():
            if isinstance(r, str):
                host, port = r.rsplit(":", 1)
                r = Route(host, int(port))
            self.routes[domain] = r
        self.nameserver = nameserver
        self.queue_interval = queue_interval
        self.tls = tls
        self.config = self.workdir / "exim.conf"
        self.spool = self.workdir / "spool"
        self.log_dir = self.workdir / "log"
        self.mainlog = self.log_dir / "mainlog"
        self.mail_dir = self.workdir / "mail"
        self.resolv = self.workdir / "resolv.conf"
        self.passwd = self.workdir / "passwd"
        self.group = self.workdir / "group"
        self.daemon_output = self.workdir / "daemon.out"
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------ config
    def config_text(self) -> str:
        routers, transports = [], []
        for n, (domain, r) in enumerate(self.routes.items()):
            routers.append(_ROUTER.format(n=n, domain=domain, host=r.host))
            transports.append(_TRANSPORT.format(n=n, port=r.port, avoid_tls="" if r.tls else "*"))
        return _CONFIG.format(
            hostname=self.hostname, qualify_domain=self.local_domains[0] if self.local_domains else self.hostname,
            user=NOBODY, group=NOGROUP, spool=self.spool, log_dir=self.log_dir, workdir=self.workdir,
            listen_host=self.listen_host, listen_port=self.listen_port,
            local_domains=" : ".join(self.local_domains) or ":",
            relay_domains=" : ".join(self.routes) or ":", tls_advertise="*" if self.tls else "",
            mail_dir=self.mail_dir, route_routers="".join(routers), route_transports="".join(transports))

    def write_config(self) -> None:
        for d in (self.workdir, self.spool, self.log_dir, self.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.spool, self.log_dir, self.mail_dir):
            shutil.chown(d, NOBODY, NOGROUP)
            d.chmod(0o750)
        # nobody must reach the workdir (pytest's tmp dirs are 0700)
        traversable_by_all(self.workdir)
        self.config.write_text(self.config_text())
        self.config.chmod(0o644)
        self.resolv.write_text(f"nameserver {self.nameserver}\noptions timeout:1 attempts:2\n")
        # Debian's Exim looks up its compiled-in user Debian-exim before it reads any config: inside the
        # namespace that name is nobody:nogroup, whether or not the machine has it.
        for path, line in ((self.passwd, f"{EXIM_USER}:x:65534:65534::/nonexistent:/usr/sbin/nologin"),
                           (self.group, f"{EXIM_USER}:x:65534:")):
            lines = [x for x in Path("/etc", path.name).read_text().splitlines()
                     if not x.startswith(f"{EXIM_USER}:")]
            path.write_text("\n".join([*lines, line]) + "\n")
        for path in (self.resolv, self.passwd, self.group):
            path.chmod(0o644)

    # ------------------------------------------------------------ running exim
    def command(self, *args: str) -> list[str]:
        """argv that runs the unpacked `exim4 -C CONFIG args...` inside its mount namespace."""
        if self.root is None:
            self.root = fetch()
        script = ('mount --bind "$1" /usr/sbin && mount --bind "$2" /etc/ld.so.cache && '
                  'mount --bind "$3" /etc/resolv.conf && mount --bind "$4" /etc/passwd && '
                  'mount --bind "$5" /etc/group && shift 5 && exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                str(self.root / "usr/sbin"), str(self.root.parent / "ld.so.cache"), str(self.resolv),
                str(self.passwd), str(self.group), "/usr/sbin/exim4", "-C", str(self.config), *args]

    def run(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), input=input, capture_output=True, timeout=timeout)

    def start(self, timeout: float = 20.0) -> "EximPeer":
        self.write_config()
        check = self.run("-bV")
        if check.returncode != 0:
            raise EximError(f"exim -bV failed: {check.stdout.decode(errors='replace')}"
                            f"{check.stderr.decode(errors='replace')}")
        out = open(self.daemon_output, "ab")
        self.proc = subprocess.Popen(self.command("-bdf", f"-q{self.queue_interval}",
                                                  "-oX", f"{self.listen_host}.{self.listen_port}"),
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EximError(f"exim daemon exited {self.proc.returncode}:\n{self.output()}\n{self.log()[-3000:]}")
            if greets(self.listen_host, self.listen_port):
                return self
            time.sleep(0.05)
        self.stop()
        raise EximError(f"exim did not listen on {self.listen_host}:{self.listen_port}:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "EximPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ sending
    def submit(self, message: bytes, sender: str, recipients: list[str] | str, *, background: bool = False,
               verbose: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """`exim4 -odi -f SENDER RCPT... < message`: accept and deliver at once (in the foreground, so the
        first delivery attempt is over when this returns); background=True only queues it (`-odq`) for the
        daemon's queue runner. verbose=True (`-v`) puts the SMTP dialogue of the delivery on stderr:
        `SMTP>>` sent, `SMTP|>` and `SMTP+>` sent pipelined, `SMTP<<` received, and a `cmdlog:` summary."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        flags = ["-odq" if background else "-odi"] + (["-v"] if verbose else [])
        out = self.run(*flags, "-f", sender, *rcpts, input=message, timeout=timeout)
        if out.returncode != 0:
            raise EximError(f"exim submission exited {out.returncode}: {out.stderr.decode(errors='replace')}\n"
                            f"{self.log()[-3000:]}")
        return out

    def run_queue(self, force: bool = True) -> subprocess.CompletedProcess:
        """One queue run in the foreground (`-qf`: even addresses whose retry time has not come)."""
        return self.run("-qf" if force else "-q")

    def queue_count(self) -> int:
        out = self.run("-bpc")
        return int(out.stdout.strip() or b"0")

    def wait_queue_empty(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.queue_count() == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    # ------------------------------------------------------------ reading
    def log(self) -> str:
        try:
            return self.mainlog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        try:
            return self.daemon_output.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.log().splitlines() if rx.search(line)]

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until `pattern` (a regex) matches at least `count` mainlog lines; return the matching lines."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log_lines(pattern)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def message_log(self, message_id: str) -> list[str]:
        """The mainlog lines of one Exim message id (e.g. 1uQ8Xy-000123-AB)."""
        return [line for line in self.log().splitlines() if f" {message_id} " in line]

    def received(self) -> list[bytes]:
        """Every message Exim delivered to its Maildir, oldest first (as stored: LF line ends)."""
        found = [p for sub in ("new", "cur") for p in (self.mail_dir / sub).glob("*") if p.is_file()]
        return [p.read_bytes() for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]

    def wait_received(self, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.received()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def exim_id(log_line: str) -> str:
    """The Exim message id of a mainlog line."""
    m = re.match(r"^\S+ \S+ (?:\[\d+\] )?(\w{6}-\w{6}-\w{2}|\w{6}-\w{11}-\w{4})", log_line)
    if not m:
        raise ValueError(f"no message id in {log_line!r}")
    return m.group(1)


def _fixture():
    import pytest

    @pytest.fixture
    def exim_factory(tmp_path: Path) -> Iterator[Any]:
        """Call `exim_factory(routes=..., ...)` for started peers; skips without Exim; stops them after."""
        skip_unless_available()
        made: list[EximPeer] = []

        def make(**kwargs: Any) -> EximPeer:
            from tests.support.daemon import free_port
            host = kwargs.pop("listen_host", "127.0.0.6")
            peer = EximPeer(tmp_path / f"exim{len(made)}", kwargs.pop("listen_port", None) or free_port(host),
                            listen_host=host, **kwargs)
            made.append(peer)
            return peer.start()
        yield make
        for peer in made:
            peer.stop()
    return exim_factory


with contextlib.suppress(ImportError):
    exim_factory = _fixture()


if __name__ == "__main__":                 # tests/run.sh: fetch and unpack ahead of the run
    import sys
    try:
        print(fetch())
    except EximUnavailable as e:
        print(f"exim peer unavailable: {e}", file=sys.stderr)
        sys.exit(1)
