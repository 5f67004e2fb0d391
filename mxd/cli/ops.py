"""`mxd queue|suppressions|audit|retention|webhooks`: the operator's views and controls, over the API."""
from __future__ import annotations

import argparse
import sys

from mxd.cli.directory import deleted, seg
from mxd.cli.output import (
    Spinner,
    api_options,
    clip,
    collect,
    fields,
    list_options,
    print_json,
    progress_wanted,
    show,
    table,
)
from mxd.client import Client

# ---------------------------------------------------------------- the outbound queue and suppressions
QUEUE_COLUMNS = [("ID", lambda q: q["id"]), ("STATUS", lambda q: q["status"]), ("TRIES", lambda q: q["attempts"]),
                 ("RECIPIENT", lambda q: q["recipient"]), ("LAST REPLY", lambda q: clip(q.get("last_reply"), 60))]


def cmd_queue(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = collect(args, api, "/api/queue", {"status": args.status}, "entries")
        return show(args, rows, lambda r: table(r, QUEUE_COLUMNS))
    if args.action == "delete":
        api.delete(f"/api/queue/{seg(args.id)}")
        return deleted(args, "queue entry", args.id)
    return show(args, api.post(f"/api/queue/{seg(args.id)}/{args.action}"), lambda q: table([q], QUEUE_COLUMNS))


def cmd_suppressions(args: argparse.Namespace, api: Client) -> int:
    columns = [("ADDRESS", lambda s: s["address"]), ("REASON", lambda s: s["reason"]),
               ("SINCE", lambda s: s.get("created_at")), ("DETAIL", lambda s: clip(s.get("detail"), 60))]
    if args.action == "list":
        rows = collect(args, api, "/api/suppressions", {}, "addresses")
        return show(args, rows, lambda r: table(r, columns))
    if args.action == "add":
        answer = api.post("/api/suppressions", {"address": args.address, "reason": args.reason})
        return show(args, answer, lambda s: table([s], columns))
    api.delete(f"/api/suppressions/{seg(args.address)}")
    return deleted(args, "suppression of", args.address)


# ---------------------------------------------------------------- audit and retention
AUDIT_COLUMNS = [("AT", lambda a: (a.get("at") or "")[:19]), ("ACTOR", lambda a: a.get("actor")),
                 ("ACTION", lambda a: a.get("action")), ("MAILBOX", lambda a: a.get("mailbox")),
                 ("RESULT", lambda a: a.get("result")), ("TARGET", lambda a: clip(a.get("target"), 50))]


def cmd_audit(args: argparse.Namespace, api: Client) -> int:
    params = {"actor": args.actor, "mailbox": args.mailbox, "action": args.action, "since": args.since,
              "until": args.until, "result": args.result}
    rows = collect(args, api, "/api/audit", params, "audit rows")
    return show(args, rows, lambda r: table(r, AUDIT_COLUMNS))


def cmd_retention(args: argparse.Namespace, api: Client) -> int:
    with Spinner("running retention", progress_wanted(args)):
        answer = api.post("/api/retention/run", {"mailbox": args.mailbox} if args.mailbox else {},
                          timeout=args.timeout)
    return show(args, answer, lambda a: fields(a) if isinstance(a, dict) else print(a))


# ---------------------------------------------------------------- webhooks
WEBHOOK_COLUMNS = [("ID", lambda w: w["id"]), ("URL", lambda w: w.get("url")), ("EVENTS", lambda w: w.get("event_types")),
                   ("MAILBOX", lambda w: w.get("mailbox") or "all"),
                   ("ENABLED", lambda w: w.get("enabled") if w.get("enabled") else f"no: {w.get('disabled_reason')}")]
ATTEMPT_COLUMNS = [("AT", lambda a: (a.get("at") or "")[:19]), ("EVENT", lambda a: a.get("event_type")),
                   ("STATUS", lambda a: a.get("status")), ("MS", lambda a: a.get("duration_ms")),
                   ("ERROR", lambda a: clip(a.get("error") or "", 60))]


def _with_secret(args: argparse.Namespace, answer: dict) -> int:
    print("The webhook's signing secret is shown this once: store it now and verify every delivery with it.",
          file=sys.stderr)
    if args.json:
        print_json(answer)
    else:
        fields(answer, [k for k in ("id", "url", "event_types", "mailbox", "enabled") if k in answer])
        print(f"\n  {answer.get('secret')}\n")
    return 0


def cmd_webhooks(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = collect(args, api, "/api/webhooks", {}, "webhooks")
        return show(args, rows, lambda r: table(r, WEBHOOK_COLUMNS))
    if args.action == "delete":
        api.delete(f"/api/webhooks/{seg(args.id)}")
        return deleted(args, "webhook", args.id)
    if args.action == "attempts":
        rows = collect(args, api, f"/api/webhooks/{seg(args.id)}/attempts", {}, "attempts")
        return show(args, rows, lambda r: table(r, ATTEMPT_COLUMNS))
    if args.action == "rotate":
        return _with_secret(args, api.post(f"/api/webhooks/{seg(args.id)}/rotate"))
    if args.action == "enable":
        return show(args, api.post(f"/api/webhooks/{seg(args.id)}/enable"), lambda w: table([w], WEBHOOK_COLUMNS))
    body: dict = {"url": args.endpoint, "event_types": args.event}
    if args.mailbox:
        body["mailbox"] = args.mailbox
    return _with_secret(args, api.post("/api/webhooks", body))


# ---------------------------------------------------------------- the parsers
def register(sub: argparse._SubParsersAction) -> None:
    common = api_options()

    p = sub.add_parser("queue", help="the outbound queue: list, retry, hold, release, delete")
    acts = p.add_subparsers(dest="action", required=True)
    q = acts.add_parser("list", parents=[common, list_options(100)], help="queue entries, oldest first")
    q.add_argument("--status", help="queued, deferred, held, delivered or failed")
    for name in ("retry", "hold", "release", "delete"):
        acts.add_parser(name, parents=[common], help=f"{name} an entry").add_argument("id", help="q_...")
    p.set_defaults(api_func=cmd_queue)

    p = sub.add_parser("suppressions", help="the suppression list: list, add, remove")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common, list_options(500)], help="suppressed addresses")
    q = acts.add_parser("add", parents=[common], help="never send to ADDRESS")
    q.add_argument("address")
    q.add_argument("--reason", default="operator")
    acts.add_parser("remove", parents=[common], help="allow ADDRESS again").add_argument("address")
    p.set_defaults(api_func=cmd_suppressions)

    p = sub.add_parser("audit", parents=[common, list_options(100)], help="the audit trail, newest first")
    p.add_argument("--actor", help="a token id")
    p.add_argument("--mailbox")
    p.add_argument("--action", help="e.g. send, 'POST /api/tokens', or a prefix ending in *")
    p.add_argument("--since", help="ISO 8601 time or seconds since the epoch")
    p.add_argument("--until", help="ISO 8601 time")
    p.add_argument("--result", help="ok, denied, or an error code")
    p.set_defaults(api_func=cmd_audit)

    p = sub.add_parser("retention", help="remove messages older than their mailbox's retention")
    acts = p.add_subparsers(dest="verb", required=True)
    q = acts.add_parser("run", parents=[common], help="run the retention sweep now and wait for it")
    q.add_argument("--mailbox", help="only this mailbox")
    q.add_argument("--progress", action="store_true", help="show the elapsed time on stderr")
    q.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the sweep")
    p.set_defaults(api_func=cmd_retention)

    p = sub.add_parser("webhooks", help="webhook endpoints: list, add, delete, rotate, enable, attempts")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common, list_options()], help="the webhook endpoints")
    q = acts.add_parser("add", parents=[common], help="add an endpoint; its secret is printed once")
    q.add_argument("endpoint", metavar="URL", help="the HTTPS endpoint that receives the events")
    q.add_argument("--event", nargs="+", action="extend", required=True,
                   help="event types, e.g. message.inbound message.delivered")
    q.add_argument("--mailbox", help="only this mailbox's events")
    acts.add_parser("delete", parents=[common], help="remove an endpoint").add_argument("id")
    acts.add_parser("rotate", parents=[common],
                    help="a new secret (printed once); the old one signs too for a while").add_argument("id")
    acts.add_parser("enable", parents=[common], help="re-enable a disabled endpoint").add_argument("id")
    acts.add_parser("attempts", parents=[common, list_options()],
                    help="an endpoint's delivery attempts").add_argument("id")
    p.set_defaults(api_func=cmd_webhooks)
