"""DNSSEC on loopback as a test peer: zones signed with ldns (ldns-keygen, ldns-signzone) at start, served by
Debian's `nsd` on one port, and Debian's `unbound` on another as the validating resolver mxd asks.

    peer = DnssecPeer(workdir, nsd_port, unbound_port)
    peer.zone("dane.test", ["mx.dane.test. A 127.0.0.2", ...])                 # signed
    peer.zone("plain.test", [...], signed=False)                             # no DNSSEC: answers are insecure
    peer.zone("dane.test", [...], tamper=[("_25._tcp.mx.dane.test", "TLSA")])  # that RRset no longer matches its
    peer.start()                                                             # RRSIG: unbound answers SERVFAIL
    resolver settings: dns_nameservers = [peer.nameserver]
    peer.stop()

Records are zone-file lines with absolute owner names (a TTL and class may be left out: TTL 60, class IN); the
SOA and NS records are written by the peer. unbound trusts each signed zone's KSK (its DS record, made by
ldns-signzone) and nothing else, so names outside the signed zones are insecure, as on the internet for an
unsigned domain. Keys are made and zones signed at every start (ECDSA P-256: ~10 ms a zone).

`skip_unless_available()` skips when nsd, unbound or ldns-signzone is missing, unless the CI environment
variable is set: then it fails (tests/run.sh installs them).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

TOOLS = {"nsd": "nsd", "unbound": "unbound", "ldns-signzone": "ldnsutils", "ldns-keygen": "ldnsutils"}


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.path.exists(p)),
                                      None)


def available() -> bool:
    return all(_which(tool) for tool in TOOLS)


def skip_unless_available() -> None:
    import pytest
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not _which(tool)})
    if not missing:
        return
    why = f"DNSSEC peers missing (apt-get install {' '.join(missing)}; see tests/run.sh)"
    if os.environ.get("CI"):
        pytest.fail(why + ", and CI requires the DANE tests to run")
    pytest.skip(why)


class DnssecError(RuntimeError):
    pass


class _Zone:
    def __init__(self, origin: str, records: list[str], signed: bool, tamper: list[tuple[str, str]]) -> None:
        self.origin = origin.rstrip(".").lower()
        self.records, self.signed = records, signed
        self.tamper = [(name.rstrip(".").lower() + ".", rtype.upper()) for name, rtype in tamper]


def _run(args: list[str], cwd: Path) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise DnssecError(f"{' '.join(args)} exited {out.returncode}: {out.stderr or out.stdout}")
    return out.stdout.strip()


def _tampered(line: str) -> str:
    """The record with the last hex digit of its rdata changed (its RRSIG then fails to verify)."""
    head, _, last = line.rstrip().rpartition(" ")
    flip = {c: d for c, d in zip("0123456789abcdefABCDEF", "1032547698badcfeBADCFE")}
    if last and last[-1] in flip:
        return f"{head} {last[:-1]}{flip[last[-1]]}"
    if line.split()[3] in ("A",):
        return f"{head} {last.rsplit('.', 1)[0]}.{(int(last.rsplit('.', 1)[1]) + 1) % 256}"
    raise DnssecError(f"do not know how to tamper with {line!r}")


class DnssecPeer:
    def __init__(self, workdir: Path, nsd_port: int, unbound_port: int, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir).resolve()
        self.nsd_port, self.unbound_port, self.host = nsd_port, unbound_port, host
        self.zones: dict[str, _Zone] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    @property
    def nameserver(self) -> str:
        """The validating resolver (unbound), as mxd's dns_nameservers wants it."""
        return f"{self.host}:{self.unbound_port}"

    def zone(self, origin: str, records: list[str], *, signed: bool = True,
             tamper: list[tuple[str, str]] | None = None) -> None:
        self.zones[origin.rstrip(".").lower()] = _Zone(origin, records, signed, tamper or [])

    # ------------------------------------------------------------ zone files
    def _write_zone(self, zone: _Zone) -> Path:
        d = self.workdir / "zones"
        d.mkdir(parents=True, exist_ok=True)
        origin = zone.origin + "."
        lines = [f"$ORIGIN {origin}", "$TTL 60",
                 f"{origin} IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
                 f"{origin} IN NS ns.{origin}", f"ns.{origin} IN A {self.host}", *zone.records]
        path = d / f"{zone.origin}.zone"
        path.write_text("\n".join(lines) + "\n")
        if not zone.signed:
            return path
        zsk = _run([_which("ldns-keygen") or "ldns-keygen", "-a", "ECDSAP256SHA256", zone.origin], d)
        ksk = _run([_which("ldns-keygen") or "ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone.origin], d)
        _run([_which("ldns-signzone") or "ldns-signzone", "-n", str(path), zsk, ksk], d)
        signed = path.with_name(path.name + ".signed")
        if zone.tamper:
            out, hit = [], set()
            for line in signed.read_text().splitlines():
                fields = line.split()
                key = (fields[0].lower(), fields[3].upper()) if len(fields) > 4 and fields[2] == "IN" else None
                if key in zone.tamper:
                    line = _tampered(line)
                    hit.add(key)
                out.append(line)
            if hit != set(zone.tamper):
                raise DnssecError(f"no record to tamper with: {sorted(set(zone.tamper) - hit)}")
            signed.write_text("\n".join(out) + "\n")
        (d / f"{zone.origin}.ds").write_text((d / f"{ksk}.ds").read_text())
        for key in (zsk, ksk):        # the private keys are not needed once the zone is signed
            for suffix in (".private", ".key", ".ds"):
                (d / f"{key}{suffix}").unlink(missing_ok=True)
        return signed

    def _write_config(self) -> None:
        w = self.workdir
        zones = {origin: self._write_zone(z) for origin, z in self.zones.items()}
        nsd = [
            "server:", f"  ip-address: {self.host}@{self.nsd_port}", f"  port: {self.nsd_port}",
            '  username: ""', '  chroot: ""', '  database: ""', f"  zonesdir: {w}", f"  zonelistfile: {w}/zone.list",
            f"  xfrdfile: {w}/xfrd.state", f"  xfrdir: {w}", f"  pidfile: {w}/nsd.pid", f"  logfile: {w}/nsd.log",
            "  server-count: 1", "  verbosity: 1", "  hide-version: yes", "  do-ip6: no",
            "remote-control:", "  control-enable: no",
        ]
        for origin, path in zones.items():
            nsd += ["zone:", f"  name: {origin}", f"  zonefile: {path}"]
        (w / "nsd.conf").write_text("\n".join(nsd) + "\n")
        unbound = [
            "server:", f"  interface: {self.host}@{self.unbound_port}", f"  port: {self.unbound_port}",
            "  do-daemonize: no", '  username: ""', '  chroot: ""', f'  directory: "{w}"', f'  pidfile: "{w}/unbound.pid"',
            "  use-syslog: no", f'  logfile: "{w}/unbound.log"', "  verbosity: 1", "  val-log-level: 2",
            "  num-threads: 1", "  do-ip6: no", "  so-reuseport: no", "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no", '  local-zone: "test." nodefault', "  qname-minimisation: no",
            '  root-hints: ""', "  outgoing-range: 64", "  num-queries-per-thread: 32", "  msg-cache-size: 1m",
            "  rrset-cache-size: 1m", "  key-cache-size: 1m", "  neg-cache-size: 1m", "  infra-cache-numhosts: 100",
        ]
        unbound += [f'  trust-anchor-file: "{w}/zones/{o}.ds"' for o, z in self.zones.items() if z.signed]
        for origin in zones:
            unbound += ["stub-zone:", f'  name: "{origin}"', f"  stub-addr: {self.host}@{self.nsd_port}"]
        (w / "unbound.conf").write_text("\n".join(unbound) + "\n")

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0) -> "DnssecPeer":
        if not available():
            raise DnssecError("nsd, unbound or ldns-signzone is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        for name, args in (("nsd", [_which("nsd") or "nsd", "-d", "-c", str(self.workdir / "nsd.conf")]),
                           ("unbound", [_which("unbound") or "unbound", "-d", "-c",
                                        str(self.workdir / "unbound.conf")])):
            log = open(self.workdir / f"{name}.out", "ab")
            self._logs.append(log)
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise DnssecError(f"{name} exited {proc.returncode}: {self.log(name)[-2000:]}")
            if all(self._ready(origin) for origin in self.zones):
                return self
            time.sleep(0.05)
        self.stop()
        raise DnssecError(f"no validated answers within {timeout:g}s: {self.log('unbound')[-2000:]}")

    def query(self, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
        """Ask unbound (with the DO bit, so that AD is set on validated answers)."""
        q = dns.message.make_query(name, rdtype, want_dnssec=True)
        q.flags |= dns.flags.AD
        return dns.query.udp(q, self.host, timeout=timeout, port=self.unbound_port)

    def _ready(self, origin: str) -> bool:
        try:
            r = self.query(origin, "SOA", timeout=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        secure = bool(r.flags & dns.flags.AD)
        return r.rcode() == dns.rcode.NOERROR and bool(r.answer) and secure == self.zones[origin].signed

    def log(self, name: str) -> str:
        parts = [self.workdir / f"{name}.out", self.workdir / f"{name}.log"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
