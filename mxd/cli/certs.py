"""`mxd certs status`: the certificate this host's listeners serve, read from the data directory (no daemon
needed): where it comes from (ACME, tls_cert/tls_key, or the self-signed one), its names, its validity and,
with ACME, when it is renewed. `kill -USR1` (systemctl kill -s USR1 mxd) renews it now."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from cryptography import x509

from mxd import config as config_mod
from mxd.certs import acme


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(cfg: config_mod.Config) -> dict[str, Any]:
    out: dict[str, Any] = {"acme": cfg.acme}
    cert = acme.current(acme.folder(cfg)) if cfg.acme else None
    if cert is not None:
        out["source"] = "acme"
        out["renew_at"] = _iso(cert.renew_at)
    else:
        try:
            cert = acme.inspect(cfg.tls_cert_path.read_bytes(), cfg.tls_key_path.read_bytes(), cfg.tls_cert_path,
                                cfg.tls_key_path)
        except (OSError, acme.AcmeError) as exc:
            out.update(source="none", error=str(exc))
            return out
        leaf = x509.load_pem_x509_certificate(cfg.tls_cert_path.read_bytes())
        out["source"] = "self-signed" if leaf.issuer == leaf.subject else "files"
        if cfg.acme:
            out["note"] = "no ACME certificate yet: this one is served until the first issuance"
    out.update(cert=str(cert.path), names=sorted(cert.names), not_before=_iso(cert.not_before),
               not_after=_iso(cert.not_after))
    return out


def cmd_certs(args: argparse.Namespace) -> int:
    report = status(config_mod.load(args.config))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["source"] != "none" else 1
    for key in ("source", "cert", "names", "not_before", "not_after", "renew_at", "note", "error"):
        if key in report:
            value = report[key]
            print(f"{key + ':':<12}{', '.join(value) if isinstance(value, list) else value}")
    return 0 if report["source"] != "none" else 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("certs", help="the TLS certificate served: source, names, validity, renewal")
    acts = p.add_subparsers(dest="verb", required=True)
    q = acts.add_parser("status", parents=[common], help="show the certificate the listeners serve")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_certs)
