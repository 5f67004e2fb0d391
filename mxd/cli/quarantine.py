"""`mxd quarantine list|show|release|delete`: the messages mxd's inbound defences held back, over the API
(admin token)."""
from __future__ import annotations

import argparse

from mxd.cli import mail
from mxd.cli.directory import seg
from mxd.cli.output import api_options, clip, collect, fields, list_options, show, table
from mxd.client import Client


def _reasons(m: dict) -> str:
    return ",".join(str(r.get("code")) for r in m.get("quarantine") or [] if isinstance(r, dict))


COLUMNS = [("ID", lambda m: m["id"]), ("HELD", lambda m: (m.get("quarantined_at") or "")[:16]),
           ("MAILBOX", lambda m: m.get("mailbox")), ("FROM", lambda m: clip((m.get("from") or {}).get("address"), 30)),
           ("REASONS", _reasons), ("SUBJECT", lambda m: clip(m.get("subject") or "", 50))]


def _held(m: dict) -> None:
    pairs = [(k, m.get(k)) for k in ("id", "mailbox", "date", "from", "subject", "quarantined_at")
             if m.get(k) not in (None, [])]
    pairs += [("reason", f"{r.get('code')}: {r.get('detail') or ''}") for r in m.get("quarantine") or []
              if isinstance(r, dict)]
    trust = m.get("trust") or {}
    if trust:
        pairs.append(("trust", f"{trust.get('verdict')} {mail.trust_reasons(trust.get('reasons'))}".strip()))
    fields(pairs)


def cmd_quarantine(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = collect(args, api, "/api/quarantine", {"mailbox": args.mailbox, "reason": args.reason},
                       "quarantined messages")
        return show(args, rows, lambda r: table(r, COLUMNS, empty="(nothing in quarantine)"))
    if args.action == "show":
        return show(args, api.get(f"/api/quarantine/{seg(args.id)}"), _held)
    if args.action == "release":
        answer = api.post(f"/api/quarantine/{seg(args.id)}/release")
        return show(args, answer, lambda m: print(f"released {m['id']} into {m['mailbox']} "
                                                  f"(thread {m.get('thread_id')})"))
    answer = api.delete(f"/api/quarantine/{seg(args.id)}")
    return show(args, answer, lambda m: print(f"deleted {m['id']} from the quarantine of {m.get('mailbox')}"))


def register(sub: argparse._SubParsersAction) -> None:
    common, listing = api_options(), list_options()
    p = sub.add_parser("quarantine", help="quarantined messages: list, show, release, delete (admin)")
    acts = p.add_subparsers(dest="action", required=True)
    q = acts.add_parser("list", parents=[common, listing], help="newest first")
    q.add_argument("--mailbox", help="only this mailbox (address or id)")
    q.add_argument("--reason", help="only messages held for this reason (spam, dmarc_quarantine, ...)")
    acts.add_parser("show", parents=[common], help="one quarantined message and its reasons").add_argument("id")
    acts.add_parser("release", parents=[common], help="let it into its mailbox as if just arrived").add_argument("id")
    acts.add_parser("delete", parents=[common], help="remove it for good").add_argument("id")
    p.set_defaults(api_func=cmd_quarantine)
