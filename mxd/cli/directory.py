"""`mxd domains|mailboxes|aliases|catchall|tokens`: the directory and the tokens, over the API."""
from __future__ import annotations

import argparse
import sys
from urllib.parse import quote

from mxd.cli import mailbox_policy
from mxd.cli.output import api_options, clip, fields, print_json, show, table, when
from mxd.client import Client


def seg(value: str) -> str:
    """One path segment (an address, a domain or an id)."""
    return quote(value, safe="@+")


def deleted(args: argparse.Namespace, what: str, key: str) -> int:
    if args.json:
        print_json({"deleted": key})
    else:
        print(f"{what} {key} deleted")
    return 0


# ---------------------------------------------------------------- domains
def _domain_line(d: dict) -> None:
    fields(d, [k for k in ("id", "name", "ready", "ready_source", "mta_sts_mode", "dns_ok", "created_at") if k in d])
    for rec in d.get("records", []):
        need = "" if rec.get("required", True) else " (optional)"
        print(f"  {rec.get('status', ''):<8} {rec.get('type', ''):<5} {rec.get('name', ''):<40} "
              f"{rec.get('kind', '')}{need}  {clip(rec.get('error') or '', 60)}".rstrip())
    sts = d.get("mta_sts")
    if sts and sts.get("checks"):
        ready = "  (ready for enforce: mxd domains mta-sts NAME enforce)" if sts.get("enforce_ready") else ""
        print(f"  MTA-STS {sts['mode']}: {'ok' if sts.get('ok') else 'not ok'}{ready}")
        for step in sts["checks"]:
            print(f"  {step['status']:<8} {step['check']:<6} {clip(step.get('detail') or '', 90)}")


def cmd_domains(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = api.get("/api/domains")["data"]
        return show(args, rows, lambda r: table(r, [("NAME", lambda d: d["name"]), ("READY", lambda d: d["ready"]),
                                                     ("SOURCE", lambda d: d["ready_source"]),
                                                     ("ID", lambda d: d["id"])]))
    name = seg(args.name)
    if args.action == "add":
        return show(args, api.post("/api/domains", {"domain": args.name}), _domain_line)
    if args.action == "delete":
        api.delete(f"/api/domains/{name}")
        return deleted(args, "domain", args.name)
    if args.action == "status":
        return show(args, api.get(f"/api/domains/{name}/status"), _domain_line)
    if args.action == "verify":
        return show(args, api.post(f"/api/domains/{name}/verify"), _domain_line)
    if args.action == "ready":
        return show(args, api.put(f"/api/domains/{name}/readiness", {"ready": not args.off}), _domain_line)
    if args.action == "mta-sts":
        return show(args, api.json("PATCH", f"/api/domains/{name}", body={"mta_sts_mode": args.mode}), _domain_line)
    plan = api.get(f"/api/domains/{name}/dns-plan")

    def render(p: dict) -> None:
        print(f"; DNS records for {p['domain']}")
        for rec in p["records"]:
            print(rec.get("zone_line") or f"{rec['name']}. IN {rec['type']} {rec['value']}")
            if rec.get("purpose"):
                print(f"    ; {rec['purpose']}")
    return show(args, plan, render)


# ---------------------------------------------------------------- mailboxes
MAILBOX_COLUMNS = [("ADDRESS", lambda b: b["address"]), ("NAME", lambda b: b.get("display_name") or ""),
                   ("RETENTION", lambda b: f"{b['retention_days']}d" if b.get("retention_days") else "default"),
                   ("ID", lambda b: b["id"])]


def cmd_mailboxes(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        return show(args, api.get("/api/mailboxes")["data"], lambda r: table(r, MAILBOX_COLUMNS))
    box = seg(args.address)
    if args.action == "add":
        body: dict = {"address": args.address}
        if args.name:
            body["display_name"] = args.name
        if args.retention_days is not None:
            body["retention_days"] = args.retention_days
        return show(args, api.post("/api/mailboxes", body), fields)
    if args.action == "show":
        return show(args, api.get(f"/api/mailboxes/{box}"), fields)
    if args.action == "delete":
        api.delete(f"/api/mailboxes/{box}")
        return deleted(args, "mailbox", args.address)
    if args.action == "policy":
        return mailbox_policy.cmd_policy(args, api, f"/api/mailboxes/{box}/policy")
    if args.days is not None:
        answer = api.put(f"/api/mailboxes/{box}/retention", {"retention_days": args.days})
    else:
        answer = api.get(f"/api/mailboxes/{box}/retention")
    return show(args, answer, fields)


# ---------------------------------------------------------------- aliases and catch-alls
def cmd_aliases(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        return show(args, api.get("/api/aliases")["data"],
                    lambda r: table(r, [("ALIAS", lambda a: a["address"]), ("TARGETS", lambda a: a["targets"])]))
    if args.action == "add":
        answer = api.post("/api/aliases", {"address": args.address, "targets": args.targets})
        return show(args, answer, lambda a: print(f"{a['address']} -> {', '.join(a['targets'])}"))
    api.delete(f"/api/aliases/{seg(args.address)}")
    return deleted(args, "alias", args.address)


def cmd_catchall(args: argparse.Namespace, api: Client) -> int:
    path = f"/api/catchalls/{seg(args.domain)}"
    if args.off:
        answer = api.put(path, {"target": None})
    elif args.mailbox:
        answer = api.put(path, {"target": args.mailbox})
    else:
        answer = api.get(path)
    return show(args, answer, lambda c: print(f"*@{c['domain']} -> {c['target'] or '(no catch-all)'}"))


# ---------------------------------------------------------------- tokens
TOKEN_COLUMNS = [("ID", lambda t: t["id"]), ("NAME", lambda t: t["name"]), ("SCOPES", lambda t: t["scopes"]),
                 ("MAILBOXES", lambda t: t["mailboxes"] if t.get("mailboxes") is not None else "all"),
                 ("HINT", lambda t: (t.get("hint") or "") + "…"), ("CREATED", lambda t: when(t.get("created_at"))),
                 ("LAST USED", lambda t: when(t.get("last_used_at")))]


def cmd_tokens(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        return show(args, api.get("/api/tokens")["data"], lambda r: table(r, TOKEN_COLUMNS))
    if args.action == "revoke":
        api.delete(f"/api/tokens/{seg(args.id)}")
        return deleted(args, "token", args.id)
    body: dict = {"name": args.name, "scopes": args.scope}
    if args.mailbox:
        body["mailboxes"] = args.mailbox
    answer = api.post("/api/tokens", body)
    print("The token's secret is shown this once and cannot be read back: store it now.", file=sys.stderr)
    if args.json:
        print_json(answer)
    else:
        fields(answer, ["id", "name", "scopes", "mailboxes"])
        print(f"\n  {answer['token']}\n")
    return 0


# ---------------------------------------------------------------- the parsers
def register(sub: argparse._SubParsersAction) -> None:
    common = api_options()

    p = sub.add_parser("domains", help="mail domains: list, add, status, dns-plan, verify, ready, mta-sts")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common], help="the served domains")
    for name, text in (("add", "serve a domain (creates its DKIM keys)"), ("delete", "stop serving a domain"),
                       ("status", "readiness and the DNS check"), ("dns-plan", "the records to publish"),
                       ("verify", "check DNS and mark the domain ready when it passes")):
        acts.add_parser(name, parents=[common], help=text).add_argument("name")
    q = acts.add_parser("ready", parents=[common], help="mark a domain ready for outbound mail (or not, with --off)")
    q.add_argument("name")
    q.add_argument("--off", action="store_true", help="mark it not ready")
    q = acts.add_parser("mta-sts", parents=[common], help="the MTA-STS policy the domain serves: off, testing, enforce")
    q.add_argument("name")
    q.add_argument("mode", choices=["off", "testing", "enforce"])
    p.set_defaults(api_func=cmd_domains)

    p = sub.add_parser("mailboxes", aliases=["mailbox"], help="mailboxes: list, add, show, delete, retention, policy")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common], help="the mailboxes this token sees")
    q = acts.add_parser("add", parents=[common], help="create a mailbox")
    q.add_argument("address")
    q.add_argument("--name", help="display name")
    q.add_argument("--retention-days", type=int, help="keep messages this many days")
    for name in ("show", "delete"):
        acts.add_parser(name, parents=[common], help=f"{name} a mailbox").add_argument("address")
    q = acts.add_parser("retention", parents=[common], help="show a mailbox's retention, or set it with --days")
    q.add_argument("address")
    q.add_argument("--days", type=int, help="keep messages this many days (0: the server's default)")
    mailbox_policy.add_parser(acts, common)
    p.set_defaults(api_func=cmd_mailboxes)

    p = sub.add_parser("aliases", help="aliases: list, add, delete")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common], help="every alias and its targets")
    q = acts.add_parser("add", parents=[common], help="deliver ADDRESS to one or more mailboxes")
    q.add_argument("address")
    q.add_argument("targets", nargs="+", metavar="TARGET")
    acts.add_parser("delete", parents=[common], help="remove an alias").add_argument("address")
    p.set_defaults(api_func=cmd_aliases)

    p = sub.add_parser("catchall", parents=[common], help="show or set a domain's catch-all mailbox")
    p.add_argument("domain")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mailbox", help="deliver unknown addresses of DOMAIN here")
    group.add_argument("--off", action="store_true", help="refuse unknown addresses again")
    p.set_defaults(api_func=cmd_catchall)

    p = sub.add_parser("tokens", help="API tokens: list, create, revoke")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common], help="the tokens (never their secrets)")
    q = acts.add_parser("create", parents=[common], help="create a token; its secret is printed once")
    q.add_argument("name")
    q.add_argument("--scope", action="append", required=True,
                   choices=["read", "search", "draft", "send", "audit", "admin"], help="repeatable")
    q.add_argument("--mailbox", action="append", help="limit the token to this mailbox (repeatable)")
    acts.add_parser("revoke", parents=[common], help="revoke a token").add_argument("id")
    p.set_defaults(api_func=cmd_tokens)
