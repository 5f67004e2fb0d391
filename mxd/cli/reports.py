"""`mxd reports dmarc|tls|errors`: the DMARC aggregate and SMTP TLS reports received, over the API."""
from __future__ import annotations

import argparse

from mxd.cli.output import api_options, clip, show, table
from mxd.client import Client

DMARC_COLUMNS = [("DOMAIN", lambda r: r["domain"]), ("REPORTER", lambda r: r["org_name"]),
                 ("SOURCE IP", lambda r: r["source_ip"]), ("MESSAGES", lambda r: r["messages"]),
                 ("SPF PASS/FAIL", lambda r: f"{r['spf_pass']}/{r['spf_fail']}"),
                 ("DKIM PASS/FAIL", lambda r: f"{r['dkim_pass']}/{r['dkim_fail']}"),
                 ("DMARC PASS/FAIL", lambda r: f"{r['dmarc_pass']}/{r['dmarc_fail']}")]
TLS_COLUMNS = [("DOMAIN", lambda r: r["policy_domain"]), ("REPORTER", lambda r: r["org_name"]),
               ("POLICY", lambda r: r["policy_type"]), ("OK", lambda r: r["successful"]),
               ("FAILED", lambda r: r["failed"]),
               ("FAILURES", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["failure_types"].items())))]
ERROR_COLUMNS = [("MESSAGE", lambda e: e["message_id"]), ("LOOKED AT", lambda e: e.get("looked_at")),
                 ("ERRORS", lambda e: clip("; ".join(f"{x.get('part') or '-'}: {x['code']}" for x in e["errors"]), 70))]


def cmd_reports(args: argparse.Namespace, api: Client) -> int:
    if args.kind == "errors":
        return show(args, api.get("/api/reports/errors")["data"], lambda r: table(r, ERROR_COLUMNS))
    params = {k: v for k, v in (("domain", args.domain), ("since", args.since), ("until", args.until)) if v}
    rows = api.get(f"/api/reports/{args.kind}", **params)["data"]
    return show(args, rows, lambda r: table(r, DMARC_COLUMNS if args.kind == "dmarc" else TLS_COLUMNS))


def register(sub: argparse._SubParsersAction) -> None:
    common = api_options()
    p = sub.add_parser("reports", help="DMARC aggregate and TLS reports received: dmarc, tls, errors")
    acts = p.add_subparsers(dest="kind", required=True)
    for kind, text in (("dmarc", "per reporter and source IP: SPF, DKIM and DMARC passes and failures"),
                       ("tls", "per reporter and policy: successful and failed TLS sessions")):
        q = acts.add_parser(kind, parents=[common], help=text)
        q.add_argument("--domain", help="only this domain")
        q.add_argument("--since", help="ISO 8601 time or seconds since the epoch")
        q.add_argument("--until", help="ISO 8601 time or seconds since the epoch")
    acts.add_parser("errors", parents=[common], help="report messages that could not be read")
    p.set_defaults(api_func=cmd_reports)
