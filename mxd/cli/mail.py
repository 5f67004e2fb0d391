"""`mxd messages|threads|send|drafts|inbox`: reading, searching, replying and sending mail over the API."""
from __future__ import annotations

import argparse
import base64
import mimetypes
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from mxd.cli.directory import seg
from mxd.cli.output import (
    Line,
    api_options,
    clip,
    collect,
    fields,
    human_size,
    list_options,
    progress_wanted,
    show,
    table,
)
from mxd.client import ApiError, Client

MESSAGE_COLUMNS = [("ID", lambda m: m["id"]), ("DATE", lambda m: (m.get("date") or m.get("received_at") or "")[:16]),
                   ("DIR", lambda m: m.get("direction")), ("MAILBOX", lambda m: m.get("mailbox")),
                   ("FROM", lambda m: clip((m.get("from") or {}).get("address"), 30)),
                   ("SUBJECT", lambda m: clip(m.get("subject") or "", 60))]
THREAD_COLUMNS = [("ID", lambda t: t["id"]), ("LAST", lambda t: (t.get("last_at") or "")[:16]),
                  ("MSGS", lambda t: t.get("message_count")), ("MAILBOX", lambda t: t.get("mailbox")),
                  ("SUBJECT", lambda t: clip(t.get("subject") or "", 60))]


# ---------------------------------------------------------------- composing a body
def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    return Path(path).read_text(encoding="utf-8")


def _attachment(path: str) -> dict:
    file = Path(path)
    ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return {"filename": file.name, "content_type": ctype,
            "content_base64": base64.b64encode(file.read_bytes()).decode("ascii")}


def compose_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of a send, reply or draft from the compose options; files are read here."""
    body: dict[str, Any] = {}
    for key in ("from", "from_name", "to", "cc", "bcc", "reply_to", "subject"):
        value = getattr(args, key, None)
        if value:
            body[key] = value
    try:
        if args.text is not None:
            body["text"] = args.text
        elif args.text_file:
            body["text"] = _read_text(args.text_file)
        if args.html_file:
            body["html"] = _read_text(args.html_file)
        if args.attach:
            body["attachments"] = [_attachment(p) for p in args.attach]
    except OSError as exc:
        raise ApiError("file_error", f"cannot read {exc.filename}: {exc.strerror}",
                       fix="Check the path given to --text-file, --html-file or --attach.") from None
    return body


def _post_compose(args: argparse.Namespace, api: Client, path: str, body: dict) -> Any:
    """POST a composed body, with the Idempotency-Key and, for attachments, the upload size on stderr."""
    headers = {"Idempotency-Key": args.idempotency_key} if getattr(args, "idempotency_key", None) else None
    if not body.get("attachments"):
        return api.post(path, body, headers=headers)
    size = sum(len(a["content_base64"]) * 3 // 4 for a in body["attachments"])
    line = Line(progress_wanted(args))
    line.update(f"uploading {len(body['attachments'])} attachment(s), {human_size(size)}")
    shown = [time.monotonic()]

    def upload(sent: int, total: int) -> None:
        if sent == total or time.monotonic() - shown[0] >= 0.2:
            shown[0] = time.monotonic()
            line.update(f"uploading {human_size(sent)} of {human_size(total)}")
    try:
        answer = api.post(path, body, headers=headers, upload=upload)
    except BaseException:
        line.done()
        raise
    line.done(f"uploaded {human_size(size)} of attachments")
    return answer


def _sent(answer: dict) -> None:
    print(f"{answer['status']}: {answer['id']} (thread {answer.get('thread_id')})"
          + (f", held: {answer['hold_reason']}" if answer.get("hold_reason") else ""))
    for r in answer.get("recipients", []):
        print(f"  {r.get('address') or r.get('recipient')}: {r.get('status')}"
              + (f" ({r['queue_id']})" if r.get("queue_id") else ""))


# ---------------------------------------------------------------- rendering
def trust_reasons(reasons: Any) -> str:
    """Trust or quarantine reasons ([{"code", "detail"}]) as one line."""
    return "; ".join(f"{r.get('code')}: {r.get('detail')}" if isinstance(r, dict) and r.get("detail")
                     else str(r.get("code") if isinstance(r, dict) else r) for r in reasons or [])


def _message(m: dict) -> None:
    keys = ("id", "thread_id", "mailbox", "direction", "message_id", "date", "from", "to", "cc", "subject")
    pairs = [(k, m.get(k)) for k in keys if m.get(k) not in (None, [])]
    trust = m.get("trust") or {}
    if trust.get("verdict"):
        pairs.append(("trust", f"{trust['verdict']} {trust_reasons(trust.get('reasons'))}".strip()))
    pairs += [("quarantine", f"{r.get('code')}: {r.get('detail') or ''}") for r in m.get("quarantine") or []
              if isinstance(r, dict)]
    pairs += [("attachment", f"{a['filename'] or '(unnamed)'} {a['content_type']} {human_size(a['size'] or 0)} "
                             f"{a['id']}") for a in m.get("attachments") or []]
    pairs += [("delivery", f"{d['recipient']} {d['status']} after {d['attempts']} attempt(s) "
                           f"{d.get('last_reply') or ''}") for d in m.get("delivery") or []]
    fields(pairs)
    print()
    print(m.get("text") or (m.get("html") and "(HTML only: see --json or --raw)") or "")


def _thread(t: dict) -> None:
    print(f"{t['id']}  {t.get('subject') or ''}  ({t.get('message_count')} messages, {t.get('mailbox')})")
    for m in t.get("messages", []):
        sender = (m.get("from") or {}).get("address", "-")
        print(f"\n--- {m['id']}  {m.get('date')}  {sender}  {m.get('direction')}")
        print((m.get("text") or "").rstrip())


# ---------------------------------------------------------------- commands
def cmd_messages(args: argparse.Namespace, api: Client) -> int:
    if args.action in ("list", "search"):
        params = {"mailbox": args.mailbox, "thread_id": getattr(args, "thread", None),
                  "include": "quarantined" if args.include_quarantined else None}
        path = "/api/messages"
        if args.action == "search":
            params["q"] = args.query
            path = "/api/messages/search"
        rows = collect(args, api, path, params, "messages")
        return show(args, rows, lambda r: table(r, MESSAGE_COLUMNS))
    if args.action == "show":
        include = {"include": "quarantined"} if args.include_quarantined else None
        if args.raw:
            sys.stdout.buffer.write(api.request("GET", f"/api/messages/{seg(args.id)}/raw", params=include).content)
            return 0
        return show(args, api.get(f"/api/messages/{seg(args.id)}", **(include or {})), _message)
    if args.action == "attachment":
        return _save_attachment(args, api)
    body = compose_body(args)
    if args.reply_all:
        body["reply_all"] = True
    return show(args, _post_compose(args, api, f"/api/messages/{seg(args.id)}/reply", body), _sent)


def _suggested_name(disposition: str) -> str:
    """The file name of a Content-Disposition: RFC 6266 `filename*` (UTF-8) when present, else `filename`."""
    marker = "filename*=utf-8''"
    at = disposition.lower().find(marker)
    if at >= 0:
        return urllib.parse.unquote(disposition[at + len(marker):].split(";", 1)[0].strip())
    if 'filename="' in disposition:
        return disposition.split('filename="', 1)[1].split('"', 1)[0]
    return ""


def _save_attachment(args: argparse.Namespace, api: Client) -> int:
    """Write one attachment's bytes to --output (- for stdout), else to its own file name in this directory."""
    resp = api.request("GET", f"/api/messages/{seg(args.id)}/attachments/{seg(args.attachment_id)}")
    if args.output == "-":
        sys.stdout.buffer.write(resp.content)
        return 0
    suggested = _suggested_name(resp.headers.get("content-disposition", ""))
    target = Path(args.output or Path(suggested).name or args.attachment_id)
    if not args.output and target.exists():
        raise ApiError("file_exists", f"{target} exists already", fix="Name another file with -o FILE.")
    try:
        target.write_bytes(resp.content)
    except OSError as exc:
        raise ApiError("file_error", f"cannot write {target}: {exc.strerror}", fix="Name another file with -o FILE.") \
            from None
    answer = {"path": str(target), "size": len(resp.content), "content_type": resp.headers.get("content-type")}
    return show(args, answer, lambda a: print(f"saved {a['path']} ({human_size(a['size'])}, {a['content_type']})"))


def cmd_threads(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = collect(args, api, "/api/threads", {"mailbox": args.mailbox}, "threads")
        return show(args, rows, lambda r: table(r, THREAD_COLUMNS))
    if args.action == "show":
        return show(args, api.get(f"/api/threads/{seg(args.id)}"), _thread)
    body = compose_body(args)
    if args.reply_all:
        body["reply_all"] = True
    return show(args, _post_compose(args, api, f"/api/threads/{seg(args.id)}/reply", body), _sent)


def cmd_send(args: argparse.Namespace, api: Client) -> int:
    return show(args, _post_compose(args, api, "/api/send", compose_body(args)), _sent)


def cmd_drafts(args: argparse.Namespace, api: Client) -> int:
    if args.action == "list":
        rows = collect(args, api, "/api/drafts", {"mailbox": args.mailbox}, "drafts")
        return show(args, rows, lambda r: table(r, [
            ("ID", lambda d: d["id"]), ("UPDATED", lambda d: (d.get("updated_at") or "")[:16]),
            ("MAILBOX", lambda d: d["mailbox"]), ("TO", lambda d: d.get("to")),
            ("SENT AS", lambda d: d.get("sent_message_id")), ("SUBJECT", lambda d: clip(d.get("subject") or "", 50))]))
    if args.action == "show":
        return show(args, api.get(f"/api/drafts/{seg(args.id)}"), fields)
    if args.action == "send":
        return show(args, _post_compose(args, api, f"/api/drafts/{seg(args.id)}/send", {}), _sent)
    path = f"/api/threads/{seg(args.thread)}/drafts" if args.thread else "/api/drafts"
    answer = _post_compose(args, api, path, compose_body(args))
    return show(args, answer, lambda d: print(f"draft {d['id']} saved for {d['mailbox']}; "
                                              f"send it with: mxd drafts send {d['id']}"))


def cmd_inbox(args: argparse.Namespace, api: Client) -> int:
    path = f"/v1/mailboxes/{seg(args.mailbox_id)}/inbox"
    if args.action == "ack":
        answer = api.post(path + "/ack", {"message_ids": args.ids})
        return show(args, answer, lambda a: fields(a) if isinstance(a, dict) else print(a))
    answer = api.get(path, limit=args.limit)
    items = answer.get("data", answer.get("messages", [])) if isinstance(answer, dict) else answer
    return show(args, answer, lambda _: table(items, MESSAGE_COLUMNS, empty="(no unacknowledged messages)"))


# ---------------------------------------------------------------- the parsers
def _compose_options(p: argparse.ArgumentParser, sender_required: bool = False, recipients: bool = True) -> None:
    p.add_argument("--from", dest="from", required=sender_required, help="the sending mailbox's address")
    p.add_argument("--from-name", dest="from_name", help="display name of the sender")
    if recipients:
        p.add_argument("--to", nargs="+", action="extend", default=[], help="recipients (repeatable)")
        p.add_argument("--cc", nargs="+", action="extend", default=[])
        p.add_argument("--bcc", nargs="+", action="extend", default=[])
        p.add_argument("--subject")
    p.add_argument("--reply-to", dest="reply_to", nargs="+", action="extend", default=[])
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the plain-text body")
    text.add_argument("--text-file", help="read the plain-text body from a file (- for stdin)")
    p.add_argument("--html-file", help="read an HTML body from a file")
    p.add_argument("--attach", nargs="+", action="extend", default=[], metavar="FILE", help="attach files")
    p.add_argument("--idempotency-key", help="a repeated send with this key is answered, not sent again")
    p.add_argument("--progress", action="store_true", help="show the upload size on stderr")


def register(sub: argparse._SubParsersAction) -> None:
    common, listing = api_options(), list_options()

    p = sub.add_parser("messages", help="messages: list, search, show, attachment, reply")
    acts = p.add_subparsers(dest="action", required=True)
    q = acts.add_parser("list", parents=[common, listing], help="newest first")
    q.add_argument("--mailbox")
    q.add_argument("--thread", help="only this thread's messages")
    q.add_argument("--include-quarantined", action="store_true", help="also quarantined messages")
    q = acts.add_parser("search", parents=[common, listing], help="full-text search")
    q.add_argument("query")
    q.add_argument("--mailbox")
    q.add_argument("--include-quarantined", action="store_true", help="also quarantined messages")
    q = acts.add_parser("show", parents=[common], help="one message (--raw: its RFC 5322 bytes)")
    q.add_argument("id")
    q.add_argument("--raw", action="store_true")
    q.add_argument("--include-quarantined", action="store_true", help="also when it is quarantined")
    q = acts.add_parser("attachment", parents=[common], help="save an attachment (ids are in messages show)")
    q.add_argument("id")
    q.add_argument("attachment_id")
    q.add_argument("-o", "--output", help="the file to write (- for stdout; default: the attachment's name)")
    q = acts.add_parser("reply", parents=[common], help="reply in the message's thread")
    q.add_argument("id")
    q.add_argument("--reply-all", action="store_true")
    _compose_options(q, recipients=False)
    p.set_defaults(api_func=cmd_messages)

    p = sub.add_parser("threads", help="threads: list, show, reply")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common, listing], help="most recent first").add_argument("--mailbox")
    acts.add_parser("show", parents=[common], help="a thread and its messages").add_argument("id")
    q = acts.add_parser("reply", parents=[common], help="reply to the thread's newest message")
    q.add_argument("id")
    q.add_argument("--reply-all", action="store_true")
    _compose_options(q, recipients=False)
    p.set_defaults(api_func=cmd_threads)

    p = sub.add_parser("send", parents=[common], help="send a message (the one preflight applies)")
    _compose_options(p, sender_required=True)
    p.set_defaults(api_func=cmd_send)

    p = sub.add_parser("drafts", help="drafts: list, create, show, send")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", parents=[common, listing], help="newest first").add_argument("--mailbox")
    q = acts.add_parser("create", parents=[common], help="save a draft (--thread: a reply draft in that thread)")
    q.add_argument("--thread", help="a thread id to reply in")
    _compose_options(q)
    acts.add_parser("show", parents=[common], help="one draft").add_argument("id")
    q = acts.add_parser("send", parents=[common], help="send a saved draft")
    q.add_argument("id")
    q.add_argument("--idempotency-key")
    p.set_defaults(api_func=cmd_drafts)

    p = sub.add_parser("inbox", help="poll a mailbox's unacknowledged inbound messages, and ack them")
    acts = p.add_subparsers(dest="action", required=True)
    q = acts.add_parser("poll", parents=[common], help="unacknowledged inbound messages, oldest first")
    q.add_argument("mailbox_id")
    q.add_argument("--limit", type=int, default=20)
    q = acts.add_parser("ack", parents=[common], help="acknowledge processed messages")
    q.add_argument("mailbox_id")
    q.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(api_func=cmd_inbox)
