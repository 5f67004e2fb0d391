"""What the API commands print: the API's JSON with --json, aligned tables otherwise, and progress
lines (a count, an upload size, a spinner) on stderr, which never mix with what a script reads."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from mxd.client import Client

Column = tuple[str, Callable[[dict], Any]]


def api_options() -> argparse.ArgumentParser:
    """The options every API command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument("--url", help="the daemon's HTTP address (default: $MXD_URL, else http://127.0.0.1:8025)")
    p.add_argument("--token", help="the API token (default: $MXD_TOKEN)")
    return p


def list_options(default_limit: int = 50) -> argparse.ArgumentParser:
    """The options of a command that lists pages: --limit, --cursor, --all, --progress."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--limit", type=int, default=default_limit, help="items per page")
    p.add_argument("--cursor", help="continue from a next_cursor")
    p.add_argument("--all", action="store_true", help="follow the cursors to the end")
    p.add_argument("--progress", action="store_true", help="show a count on stderr (the default on a terminal)")
    return p


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def show(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> int:
    """Print `data` as JSON with --json, else through render."""
    if args.json:
        print_json(data)
    else:
        render(data)
    return 0


def table(rows: Sequence[dict], columns: Sequence[Column], empty: str = "(none)") -> None:
    """Rows as aligned columns under a header; the last column is not padded."""
    if not rows:
        print(empty)
        return
    cells = [[_cell(get(row)) for _, get in columns] for row in rows]
    heads = [name for name, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    for line in [heads] + cells:
        print("  ".join(v.ljust(w) for v, w in zip(line[:-1], widths)) + ("  " if len(line) > 1 else "") + line[-1])


def fields(obj: dict | list[tuple[str, Any]], keys: Iterable[str] | None = None) -> None:
    """One `key: value` line per field of an object (or per pair of a list, where keys may repeat)."""
    pairs = obj if isinstance(obj, list) else [(k, obj.get(k)) for k in (keys if keys is not None else obj.keys())]
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return value.get("address") or json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return " ".join(str(value).split())


def clip(text: Any, width: int) -> str:
    text = _cell(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def when(value: Any) -> str | None:
    """A time as the API gives it (ISO 8601, or seconds since the epoch) as UTC to the second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        from datetime import datetime, timezone
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value[:19] + "Z" if isinstance(value, str) and len(value) > 19 else value


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---------------------------------------------------------------- progress on stderr
def progress_wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


class Line:
    """One status line on stderr, rewritten in place; off when not wanted."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.width = 0

    def update(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = max(self.width, len(text))

    def done(self, text: str | None = None) -> None:
        if self.enabled and (self.width or text):
            sys.stderr.write("\r" + (text or "").ljust(self.width) + "\n")
            sys.stderr.flush()


class Spinner:
    """A spinner with the elapsed time on stderr while a slow call runs (context manager)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.line = Line(enabled)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        for mark in itertools.cycle("|/-\\"):
            self.line.update(f"{mark} {self.label} {time.monotonic() - self.started:.1f}s")
            if self._stop.wait(0.2):
                return

    def __enter__(self) -> "Spinner":
        if self.line.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.line.done(f"{self.label} took {time.monotonic() - self.started:.1f}s")


def collect(args: argparse.Namespace, api: Client, path: str, params: dict[str, Any], noun: str) -> list[dict]:
    """The items of a list call: one page, or with --all every page, counting on stderr as they come.

    When a page was cut short and --all was not given, the next cursor is named on stderr."""
    query = dict(params, limit=args.limit, cursor=args.cursor)
    line = Line(args.all and progress_wanted(args))
    items: list[dict] = []
    try:
        for answer in api.pages(path, query):
            items += answer.get("data", [])
            line.update(f"{len(items)} {noun}")
            if not args.all:
                if answer.get("next_cursor"):
                    print(f"more: --cursor {answer['next_cursor']}  (or --all)", file=sys.stderr)
                break
    finally:
        line.done(f"{len(items)} {noun}")
    return items
