"""`mxd tls-reports send [--day YYYY-MM-DD]`: send the SMTP TLS reports (RFC 8460) due now, over the API."""
from __future__ import annotations

import argparse

from mxd.cli.output import api_options, clip, show, table
from mxd.client import Client

COLUMNS = [("DOMAIN", lambda r: r["domain"]), ("DAY", lambda r: r["day"]), ("OUTCOME", lambda r: r["outcome"]),
           ("RUA", lambda r: clip(", ".join(r["rua"]), 50)), ("REASON", lambda r: clip(r.get("reason", ""), 50))]


def cmd_tls_reports(args: argparse.Namespace, api: Client) -> int:
    body = {"day": args.day} if args.day else {}
    rows = api.post("/api/tls-reports/send", body)["data"]
    return show(args, rows, lambda r: table(r, COLUMNS, empty="no TLS report was due"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tls-reports", help="SMTP TLS reports this server sends (RFC 8460)")
    acts = p.add_subparsers(dest="action", required=True)
    q = acts.add_parser("send", parents=[api_options()],
                        help="send the reports due now: the past days not reported yet, or one UTC day")
    q.add_argument("--day", help="a UTC date, YYYY-MM-DD (today included: the sessions so far)")
    p.set_defaults(api_func=cmd_tls_reports)
