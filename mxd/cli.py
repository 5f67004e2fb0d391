"""The `mxd` command: init, serve, and operator helpers."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mxd import config as config_mod
from mxd import dnsrecords, keys, tokens
from mxd.errors import MxdError


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", None))


def cmd_init(args: argparse.Namespace) -> int:
    from mxd.db import Database
    from mxd.store import directory

    env = dict(os.environ)
    if args.data_dir:
        env["MXD_DATA_DIR"] = args.data_dir
    if args.hostname:
        env["MXD_HOSTNAME"] = args.hostname
    cfg = config_mod.load(args.config, env)
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = Path(args.config) if args.config else data / "mxd.toml"
    created_config = False
    if not config_path.exists():
        config_path.write_text("# mxd configuration; every key is documented in config/mxd.example.toml\n"
                               + config_mod.to_toml(cfg))
        config_path.chmod(0o600)
        created_config = True

    if not cfg.tls_cert:
        keys.ensure_self_signed_cert(cfg.tls_cert_path, cfg.tls_key_path, cfg.hostname)
    db = Database(cfg.effective_store_url)
    db.start()
    try:
        records: list[dict[str, Any]] = []
        for name in args.domain or []:
            domain, _ = db.write_sync(directory.create_domain, name)
            dkim = keys.generate_dkim_keys(cfg.dkim_dir, domain.name)
            records += [r.to_json() for r in dnsrecords.required_records(
                domain.name, cfg.hostname, dkim, ipv4=args.ipv4, ipv6=args.ipv6)]
        secret = db.write_sync(tokens.ensure_admin)
    finally:
        db.close()

    out = {"admin_token": secret, "config_path": str(config_path), "config_created": created_config,
           "data_dir": str(data), "hostname": cfg.hostname, "domains": args.domain or [],
           "dns_records": records}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"config:    {config_path}{'' if created_config else ' (kept as it was)'}")
    print(f"data dir:  {data}")
    print(f"hostname:  {cfg.hostname}")
    if secret:
        print(f"\nadmin token (shown once, store it now):\n  {secret}\n")
    else:
        print("\nadmin token: created earlier and shown only then; it is not stored in clear anywhere.\n")
    if records:
        print("Publish these DNS records:")
        for rec in records:
            print("  " + dnsrecords.DnsRecord(rec["name"], rec["type"], rec["value"], rec["purpose"]).zone_line())
            print(f"      ; {rec['purpose']}")
    print("\nStart the daemon with: mxd serve" + (f" --config {config_path}" if args.config else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mxd.app import StartupError, serve

    cfg = _load(args)
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(cfg))
    except StartupError as exc:
        print(f"mxd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_dkim(args: argparse.Namespace) -> int:
    cfg = _load(args)
    try:
        if args.action == "rotate":
            found = keys.rotate_dkim_keys(cfg.dkim_dir, args.domain)
        elif args.action == "retire":
            if not args.selector:
                raise MxdError("bad_request", "retire needs a SELECTOR", fix="mxd dkim list DOMAIN shows them")
            found = keys.retire_dkim_key(cfg.dkim_dir, args.domain, args.selector)
        else:
            found = keys.load_dkim_keys(cfg.dkim_dir, args.domain)
    except keys.KeyMaterialError as exc:
        raise MxdError("bad_request", str(exc), fix="Check the domain and selector with: mxd dkim list DOMAIN") \
            from None
    rows = [{"selector": k.selector, "algorithm": k.algorithm, "state": k.state, "created": k.created,
             "dns_name": k.dns_name, "dns_value": k.public_dns_value} for k in found]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['selector']:<14} {row['algorithm']:<15} {row['state']:<10} {row['created']}")
    published = [k for k in found if k.state in (keys.ACTIVE, keys.PUBLISHED)]
    if args.action != "list" and published:
        print("\nPublish (and keep published) these DNS records:")
        for rec in dnsrecords.required_records(published[0].domain, cfg.hostname, published):
            if "._domainkey." in rec.name:
                print("  " + rec.zone_line())
    return 0


def _api(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> Any:
    """Call the running daemon's API with $MXD_URL (default: the configured http_listen) and $MXD_TOKEN."""
    import urllib.error
    import urllib.request

    base = os.environ.get("MXD_URL") or f"http://{_load(args).http_listen}"
    token = os.environ.get("MXD_TOKEN", "")
    if not token:
        raise MxdError("unauthorized", "MXD_TOKEN is not set", fix="export MXD_TOKEN=<an admin token>")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
        except Exception:
            raise MxdError("internal", f"HTTP {exc.code} from {base}") from None
        raise MxdError(err.get("code", "internal"), err.get("message", ""), err.get("fix")) from None
    except urllib.error.URLError as exc:
        raise MxdError("internal", f"cannot reach {base}: {exc.reason}",
                       fix="Is `mxd serve` running? Set MXD_URL to its HTTP address.") from None
    return json.loads(raw) if raw else None


def _show(args: argparse.Namespace, rows: list[dict], line: Any) -> int:
    """--json prints the rows as the API gave them; otherwise one line each."""
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(line(row))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.id:
        raise MxdError("bad_request", f"queue {args.action} needs a queue entry id", fix="mxd queue list shows them")
    if args.action == "list":
        query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
        result = _api(args, "GET", "/api/queue" + query)
        rows = result["data"]
    elif args.action == "delete":
        _api(args, "DELETE", f"/api/queue/{args.id}")
        rows = []
    else:
        rows = [_api(args, "POST", f"/api/queue/{args.id}/{args.action}")]
    return _show(args, rows, lambda row: f"{row['id']}  {row['status']:<9} {row['attempts']:>3}  "
                                          f"{row['recipient']:<40} {row['last_reply'][:60]}")


def cmd_suppressions(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.address:
        raise MxdError("bad_request", f"suppressions {args.action} needs an address")
    if args.action == "list":
        rows = _api(args, "GET", "/api/suppressions?limit=500")["data"]
    elif args.action == "add":
        rows = [_api(args, "POST", "/api/suppressions", {"address": args.address, "reason": "operator"})]
    else:
        _api(args, "DELETE", f"/api/suppressions/{args.address}")
        rows = []
    return _show(args, rows, lambda row: f"{row['address']:<40} {row['reason']:<12} {row['created_at']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mxd", description="A self-hosted mail server in one daemon.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="path of mxd.toml (default: $MXD_CONFIG, else DATA_DIR/mxd.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create the data dir, store, keys, certificate and admin token")
    p.add_argument("--data-dir", help="state directory (default: $MXD_DATA_DIR or /var/lib/mxd)")
    p.add_argument("--hostname", help="this host's public name (the MX target)")
    p.add_argument("--domain", action="append", help="a mail domain to serve (repeatable)")
    p.add_argument("--ipv4", help="the public IPv4 address, for the SPF and A records")
    p.add_argument("--ipv6", help="the public IPv6 address, for the SPF and AAAA records")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the daemon")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dkim", parents=[common], help="list, rotate or retire a domain's DKIM keys")
    p.add_argument("action", choices=["list", "rotate", "retire"])
    p.add_argument("domain")
    p.add_argument("selector", nargs="?", help="with retire: the rotated-out selector to take out of DNS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dkim)

    p = sub.add_parser("queue", parents=[common], help="the outbound queue (via the API: MXD_URL, MXD_TOKEN)")
    p.add_argument("action", choices=["list", "retry", "hold", "release", "delete"])
    p.add_argument("id", nargs="?", help="queue entry id (q_...) for retry, hold, release, delete")
    p.add_argument("--status", help="with list: queued, deferred, held, delivered, failed")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("suppressions", parents=[common], help="the suppression list (via the API)")
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("address", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suppressions)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except config_mod.ConfigError as exc:
        print(f"mxd: config: {exc}", file=sys.stderr)
        return 2
    except MxdError as exc:
        print(f"mxd: {exc.code}: {exc.message}\n  fix: {exc.fix}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
