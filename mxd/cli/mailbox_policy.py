"""`mxd mailboxes policy ADDRESS` (also `mxd mailbox policy`): show a mailbox's policy, change it (a JSON
document with --set, or the common outbound and inbound switches), or put it back to the default."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mxd.cli.output import show
from mxd.client import ApiError, Client


def _document(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except OSError as exc:
        raise ApiError("bad_request", f"cannot read {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError("invalid_json", f"{source} is not JSON",
                       fix='Write the policy as JSON: {"outbound": {...}, "inbound": {...}}.') from None


def body_of(args: argparse.Namespace) -> dict | None:
    """The PUT body the options ask for (None: only show). --set's document, then the switches over it."""
    body: Any = _document(args.set) if args.set else {}
    if not isinstance(body, dict):
        raise ApiError("invalid_policy", "the policy document must be a JSON object")
    if args.allow_to is not None or args.otherwise:
        outbound = body.setdefault("outbound", {})
        if not isinstance(outbound, dict):
            raise ApiError("invalid_policy", "outbound: expected an object")
        if args.allow_to is not None:
            outbound["allow"] = [a for a in args.allow_to if a]       # --allow-to "": anyone again
        if args.otherwise:
            outbound["otherwise"] = args.otherwise
    if args.require_authenticated is not None:
        inbound = body.setdefault("inbound", {})
        if not isinstance(inbound, dict):
            raise ApiError("invalid_policy", "inbound: expected an object")
        inbound["require_authenticated"] = args.require_authenticated
    return body if (args.set or body) else None


def render(policy: dict) -> None:
    out, inb = policy["outbound"], policy["inbound"]
    print(f"outbound.allow                  {', '.join(out['allow']) or '(anyone)'}")
    print(f"outbound.otherwise              {out['otherwise']}")
    print(f"inbound.allow_senders           {', '.join(inb['allow_senders']) or '(anyone)'}")
    print(f"inbound.block_senders           {', '.join(inb['block_senders']) or '(none)'}")
    print(f"inbound.require_authenticated   {str(inb['require_authenticated']).lower()}")
    blocked = inb["blocked_attachments"]
    print(f"inbound.blocked_attachments     {blocked if isinstance(blocked, str) else ', '.join(blocked) or '(none)'}")
    size = inb["max_message_size"]
    print(f"inbound.max_message_size        {size if size is not None else '(server limit)'}")


def cmd_policy(args: argparse.Namespace, api: Client, path: str) -> int:
    """`path`: the mailbox's policy path, /api/mailboxes/{address}/policy."""
    if args.reset:
        return show(args, api.delete(path), render)
    body = body_of(args)
    return show(args, api.get(path) if body is None else api.put(path, body), render)


def add_parser(acts: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    q = acts.add_parser("policy", parents=[common], help="show or change a mailbox's policy (changing needs admin)",
                        description="With no option, show the policy. Options change it: keys not given keep "
                                    "their values.")
    q.add_argument("address")
    group = q.add_mutually_exclusive_group()
    group.add_argument("--reset", action="store_true", help="back to the default policy")
    group.add_argument("--set", metavar="FILE", help="a JSON policy document (- reads standard input)")
    q.add_argument("--allow-to", action="append", metavar="ADDRESS_OR_DOMAIN",
                   help="the only recipients the mailbox may send to (repeatable; --allow-to '' clears the list)")
    q.add_argument("--otherwise", choices=["hold", "refuse"], help="a recipient outside --allow-to: hold or refuse")
    q.add_argument("--require-authenticated", action=argparse.BooleanOptionalAction, default=None,
                   help="quarantine inbound mail that does not pass DMARC (or aligned SPF/DKIM)")
