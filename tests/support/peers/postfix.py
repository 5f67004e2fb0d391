"""A private Postfix instance as a test peer (relay in front of mxd, or a discard sink for benchmarks).

Each PostfixPeer owns its config, queue and data directories under `workdir`, listens for SMTP on
listen_host:listen_port only (127.0.0.1 unless told otherwise), never asks DNS, and logs to
`workdir/maillog` (there is no syslog here). With `virtual_mailboxes` it is also the final
destination of those domains and stores their mail in Maildirs under `workdir/mail`. Several can run side by side. Everything runs as root (Postfix itself drops to
`mail_owner = postfix`); `postfix -c DIR` as root needs no `alternate_config_directories`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.peers.files import traversable_by_all
from tests.support.smtp import greets

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None)
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SMTP_SOURCE = shutil.which("smtp-source") or ("/usr/sbin/smtp-source"
                                              if os.path.exists("/usr/sbin/smtp-source") else None)

# Services this instance needs; no chroot (chroot wants copies of /etc files inside the queue).
# Columns: service type private unpriv chroot wakeup maxproc command.
_MASTER_CF = """\
{listen}  inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    return POSTFIX is not None and os.path.exists(POSTCONF)


def skip_unless_available() -> None:
    """pytest.skip (with the reason) unless Postfix is installed and we can run it as root."""
    import pytest
    if not available():
        pytest.skip("postfix is not installed (apt-get install postfix; see tests/run.sh)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance must be started as root")


class PostfixError(RuntimeError):
    pass


class PostfixPeer:
    def __init__(self, workdir: Path, listen_port: int, *, relay_domains: dict[str, str] | None = None,
                 discard_domains: list[str] | tuple[str, ...] = (), hostname: str = "postfix.test",
                 extra: dict[str, str] | None = None, listen_host: str = "127.0.0.1",
                 virtual_mailboxes: dict[str, list[str]] | None = None) -> None:
        """virtual_mailboxes: {"domain": ["local", ...]} makes Postfix the final destination of each domain,
        delivering local@domain to the Maildir `workdir/mail/domain/local/` (see `maildir`)."""
        self.workdir = Path(workdir).resolve()
        self.listen_port = listen_port
        self.listen_host = listen_host
        self.virtual_mailboxes = {d: list(users) for d, users in (virtual_mailboxes or {}).items()}
        self.mail_dir = self.workdir / "mail"
        self.relay_domains = dict(relay_domains or {})
        self.discard_domains = list(discard_domains)
        self.hostname = hostname
        self.extra = dict(extra or {})
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "lib"
        self.maillog = self.workdir / "maillog"
        self.running = False

    # ------------------------------------------------------------ config
    def main_cf(self) -> dict[str, str]:
        transports = [f"{d}=smtp:[{hp.rsplit(':', 1)[0]}]:{hp.rsplit(':', 1)[1]}"
                      for d, hp in self.relay_domains.items()]
        transports += [f"{d}=discard:" for d in self.discard_domains]
        domains = list(self.relay_domains) + self.discard_domains
        cf = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.workdir),
            "myhostname": self.hostname,
            "mydomain": self.hostname.split(".", 1)[-1],
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": ", ".join(domains),
            "transport_maps": ("inline:{" + ", ".join(transports) + "}") if transports else "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "yes",
            "message_size_limit": "52428800",
            # Local pickup/sendmail are never used; keep postdrop happy anyway.
            "authorized_submit_users": "static:anyone",
        }
        if self.virtual_mailboxes:
            maps = [f"{user}@{domain}={domain}/{user}/" for domain, users in self.virtual_mailboxes.items()
                    for user in users]                      # a trailing slash means Maildir (virtual(8))
            uid, gid = self.mail_owner()
            cf.update({
                "virtual_mailbox_domains": ", ".join(self.virtual_mailboxes),
                "virtual_mailbox_base": str(self.mail_dir),
                "virtual_mailbox_maps": "inline:{" + ", ".join(maps) + "}",
                "virtual_uid_maps": f"static:{uid}",
                "virtual_gid_maps": f"static:{gid}",
                "virtual_transport": "virtual",
                "virtual_mailbox_limit": cf["message_size_limit"],   # virtual(8) refuses a smaller one
            })
        cf.update(self.extra)
        return cf

    def mail_owner(self) -> tuple[int, int]:
        """The uid/gid Maildir delivery runs as: the workdir's owner, or nobody (65534) when that is root or
        another system account (virtual(8) refuses uids below virtual_minimum_uid, 100)."""
        st = self.workdir.stat()
        return (st.st_uid, st.st_gid) if st.st_uid >= 100 else (65534, 65534)

    def maildir(self, address: str) -> Path:
        local, domain = address.rsplit("@", 1)
        return self.mail_dir / domain / local

    def delivered(self, address: str) -> list[Path]:
        """The files in address's Maildir (new/ and cur/), oldest first."""
        found = [p for sub in ("new", "cur") for p in (self.maildir(address) / sub).glob("*") if p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Postfix insists: queue_directory owned by root, data_directory by mail_owner.
        os.chown(self.queue_dir, 0, 0)
        os.chmod(self.queue_dir, 0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")
        os.chmod(self.data_dir, 0o700)
        if self.virtual_mailboxes:
            self.workdir.mkdir(parents=True, exist_ok=True)
            uid, gid = self.mail_owner()
            self.mail_dir.mkdir(exist_ok=True)
            os.chown(self.mail_dir, uid, gid)
            os.chmod(self.mail_dir, 0o700)
        # The workdir (pytest tmp, mode 0700) must be traversable by the postfix user.
        traversable_by_all(self.workdir)
        lines = [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(listen=f"{self.listen_host}:{self.listen_port}"))
        self.maillog.touch()

    # ------------------------------------------------------------ lifecycle
    def _postfix(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            # Without syslog, Postfix prints its fatal errors only to a terminal: ask again through one.
            why = ""
            if shutil.which("script"):
                cmd = " ".join([POSTFIX, "-c", str(self.config_dir), *args])
                why = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                                     timeout=timeout).stdout
            raise PostfixError(f"postfix {' '.join(args)} exited {out.returncode}: {out.stdout}{out.stderr}{why}\n"
                               f"maillog tail:\n{self.log()[-3000:]}")
        return out

    def start(self, timeout: float = 20.0) -> "PostfixPeer":
        if not available():
            raise PostfixError("postfix is not installed")
        self.write_config()
        self._postfix("check")
        self._postfix("start")
        self.running = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if greets(self.listen_host, self.listen_port):
                return self
            time.sleep(0.1)
        raise PostfixError(f"postfix did not listen on {self.listen_port}:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        out = self._postfix("stop", check=False)
        if out.returncode != 0:
            self._postfix("abort", check=False)
        # `postfix stop` returns before master has exited; wait for its pid file to be released.
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                return
            time.sleep(0.1)
        self._postfix("abort", check=False)

    def flush(self) -> None:
        subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"], capture_output=True, timeout=30)

    def queue(self) -> str:
        """The `postqueue -p` listing ("Mail queue is empty" when it is)."""
        return subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-p"], capture_output=True, text=True,
                              timeout=30).stdout

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until `pattern` (a regex) matches at least `count` log lines; return the matching lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log().splitlines() if rx.search(line)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def __enter__(self) -> "PostfixPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fixture():
    import pytest

    @pytest.fixture
    def postfix_factory(tmp_path: Path):
        """Import into a test module; call `postfix_factory(relay_domains=..., ...)` for started peers.

        Skips the test when Postfix is missing; stops every peer it made at teardown."""
        skip_unless_available()
        made: list[PostfixPeer] = []

        def make(**kwargs) -> PostfixPeer:
            from tests.support.daemon import free_port
            peer = PostfixPeer(tmp_path / f"postfix{len(made)}", kwargs.pop("listen_port", None) or free_port(),
                               **kwargs)
            made.append(peer)
            return peer.start()
        yield make
        for peer in made:
            peer.stop()
    return postfix_factory


try:
    postfix_factory = _fixture()
except ImportError:                      # pytest missing: the class is still usable (bench/inbound)
    pass
