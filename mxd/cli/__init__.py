"""The `mxd` command: init, serve and dkim act on this host; every other command acts on a running
daemon through its HTTP API (mxd.cli, with $MXD_URL and $MXD_TOKEN)."""
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
from mxd import dnsrecords, keys
from mxd.cli import certs, commands
from mxd.client import ApiError, Client
from mxd.errors import MxdError
from mxd.store import tokens


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", None))


def cmd_init(args: argparse.Namespace) -> int:
    from mxd.service import directory
    from mxd.store import open_store

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
        text = "# mxd configuration; every key is documented in config/mxd.example.toml\n" + config_mod.to_toml(cfg)
        # 0600 from the start, whatever the umask: it may hold the smart host's password
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o600)
            fh.write(text)
        created_config = True

    if not cfg.tls_cert:
        keys.ensure_self_signed_cert(cfg.tls_cert_path, cfg.tls_key_path, cfg.hostname)
    db = open_store(cfg.effective_store_url)
    try:
        records: list[dict[str, Any]] = []
        for name in args.domain or []:
            domain, dkim = directory.setup_domain(db, cfg, name)
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
    from mxd.daemon import StartupError, serve

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mxd", description="A self-hosted mail server in one daemon.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="path of mxd.toml (default: $MXD_CONFIG, else DATA_DIR/mxd.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    commands.register(sub)
    certs.register(sub, common)

    args = parser.parse_args(argv)
    try:
        if hasattr(args, "api_func"):
            with Client(args.url, args.token) as api:
                return args.api_func(args, api)
        return args.func(args)
    except config_mod.ConfigError as exc:
        print(f"mxd: config: {exc}", file=sys.stderr)
        return 2
    except (MxdError, ApiError) as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:             # `mxd messages list | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

