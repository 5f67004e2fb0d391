"""Threading owns how messages group into conversations: JWZ threading over message-ids with ghost parents, and subject normalisation."""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mxd.mime.parse import Parsed

# --- subjects ----------------------------------------------------------------

# Reply and forward prefixes, case-folded: English, German, Nordic, Dutch, Italian,
# French, Spanish/Portuguese, Polish, Turkish, Baltic, Hungarian, Greek, Hebrew, CJK.
_REPLY_WORDS = (
    "re", "fwd", "fw", "aw", "wg", "sv", "vs", "vl", "vb", "antw", "doorst", "rif", "tr", "réf",
    "rv", "enc", "res", "odp", "pd", "ynt", "ilt", "i̇lt", "atb", "pārs", "ats", "pers", "vá",
    "továbbítás", "απ", "σχετ", "πρθ", "השב", "הועבר",
    "回复", "回覆", "答复", "答覆", "转发", "轉發", "转寄", "轉寄", "返信", "転送", "회신", "전달",
)
_WORDS = "|".join(sorted(map(re.escape, _REPLY_WORDS), key=len, reverse=True))
# Possessive white space and counters: a subject that fails to match does so in linear time.
_PREFIX = re.compile(
    r"\s*+(?:(\[[^\[\]]*+\])"                                # a mailing-list tag: [list-name]
    rf"|({_WORDS})\s*+(?:\[\d++\]|\(\d++\)|\^\d++)?+\s*+[:：])"   # Re: Re[2]: Re(2): Re^2: 回复：
)
_FWD_SUFFIXES = ("(fwd)", "(fw)")                             # pine's trailing "(fwd)"
MAX_SUBJECT = 2000          # characters of a subject read for threading; a normalised subject keeps 255


def _strip(subject: str) -> tuple[str, bool]:
    s = subject[:MAX_SUBJECT].casefold()          # bounded before any matching
    pos, reply = 0, False
    while m := _PREFIX.match(s, pos):
        reply = reply or m.group(2) is not None
        pos = m.end()
    s = s[pos:].rstrip()
    while s.endswith(_FWD_SUFFIXES):
        s, reply = s[:s.rindex("(")].rstrip(), True
    return " ".join(s.split()), reply


def normalize_subject(subject: str) -> str:
    """The subject without reply/forward prefixes and list tags, white space collapsed, case-folded."""
    return _strip(subject)[0]


def is_reply_subject(subject: str) -> bool:
    """Whether the subject carries a reply or forward prefix."""
    return _strip(subject)[1]


# --- threads -----------------------------------------------------------------

@dataclass
class ThreadInput:
    key: Hashable                       # the caller's opaque id for the message
    message_id: str | None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str = ""
    date: datetime | None = None

    @classmethod
    def from_parsed(cls, key: Hashable, parsed: Parsed) -> ThreadInput:
        return cls(key, parsed.message_id, list(parsed.in_reply_to), list(parsed.references),
                   parsed.subject, parsed.date)


@dataclass
class ThreadNode:
    message_id: str | None              # None only for a dummy that groups several roots of one thread
    key: Hashable | None                # None for a ghost (referenced but absent) or a dummy
    children: list[ThreadNode] = field(default_factory=list)
    date: datetime | None = None        # the message's date; for a ghost or dummy the earliest below it

    def walk(self) -> Iterator[ThreadNode]:
        """This node and every node below it, depth first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def keys(self) -> set[Hashable]:
        return {n.key for n in self.walk() if n.key is not None}


class _C:
    """A JWZ container: one message-id, with or without its message."""
    __slots__ = ("mid", "msg", "parent", "children", "date")

    def __init__(self, mid: str | None, msg: ThreadInput | None = None) -> None:
        self.mid = mid
        self.msg = msg
        self.parent: _C | None = None
        self.children: list[_C] = []
        self.date: datetime | None = None

    def reaches(self, other: _C) -> bool:
        """Whether other is self or one of its ancestors."""
        node: _C | None = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False

    def adopt(self, child: _C) -> None:
        child.parent = self
        self.children.append(child)


def _ids(values: Iterable[str], own: str | None) -> list[str]:
    out = []
    for v in values:
        v = v.strip().strip("<>").strip()
        if v and v != own and v not in out:      # a message never parents itself
            out.append(v)
    return out


def _utc(d: datetime | None) -> datetime | None:
    if d is None:
        return None
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


_NEVER = datetime.max.replace(tzinfo=timezone.utc)


def _order(date: datetime | None, mid: str | None, key: Hashable) -> tuple:
    return (date is None, date or _NEVER, mid or "", str(key))


def _candidates(m: ThreadInput) -> list[str]:
    """Parent ids in order of preference.

    notmuch's rule (lib/add-message.cc): In-Reply-To when it holds exactly one id, else the
    last References id, else the first In-Reply-To id; the other ids follow as fallbacks
    for when the preferred parent would close a loop.
    """
    irt, refs = m.in_reply_to, m.references
    first = irt[:1] if len(irt) == 1 else refs[-1:] or irt[:1]
    return list(dict.fromkeys(first + refs[::-1] + irt))


def build_threads(messages: Iterable[ThreadInput], group_by_subject: bool = False) -> list[ThreadNode]:
    """Thread messages (https://www.jwz.org/doc/threading.html); roots sorted by date.

    The result does not depend on input order. Messages sharing one message-id are all kept:
    the oldest owns the id, later copies hang below it. Every set of messages connected by
    their ids ends up in one tree (a dummy root joins trees that only share an id).
    """
    msgs = []
    for m in messages:
        mid = (m.message_id or "").strip().strip("<>").strip() or None
        msgs.append(ThreadInput(m.key, mid, _ids(m.in_reply_to, mid), _ids(m.references, mid),
                                m.subject or "", _utc(m.date)))
    msgs.sort(key=lambda m: _order(m.date, m.message_id, m.key))      # oldest first

    table: dict[str, _C] = {}

    def get(mid: str) -> _C:
        c = table.get(mid)
        if c is None:
            c = table[mid] = _C(mid)
        return c

    # JWZ 1A: one container per message-id; a duplicate id gets its own container below the first
    real: list[_C] = []
    for m in msgs:
        c = table.get(m.message_id) if m.message_id else None
        if c is None or c.msg is None:
            c = get(m.message_id) if m.message_id else _C(None)
            c.msg = m
        else:
            dup = _C(m.message_id, m)
            c.adopt(dup)
            c = dup
        c.date = m.date
        real.append(c)

    # JWZ 1C: each message's own parent, newest first, so that in a loop the oldest stays a root
    for c in reversed(real):
        if c.parent is not None:                 # a duplicate, already placed
            continue
        for pid in _candidates(c.msg):
            p = get(pid)
            if not p.reaches(c):
                p.adopt(c)
                break

    # JWZ 1B: References chains place the containers that have no parent yet, oldest message first
    for c in real:
        refs = c.msg.references
        for a, b in zip(refs, refs[1:]):
            pa, pb = get(a), get(b)
            if pb.parent is None and not pa.reaches(pb):
                pa.adopt(pb)

    roots = [c for c in table.values() if c.parent is None]
    roots += [c for c in real if c.parent is None and c.mid is None]
    roots = [r for root in roots for r in _prune(root)]        # JWZ 2-4
    roots = _join_components(roots, msgs)
    if group_by_subject:
        roots = _group_by_subject(roots)                        # JWZ 5
    return [_node(r) for r in sorted(roots, key=_sort_key)]


def partition(messages: Iterable[ThreadInput], group_by_subject: bool = False) -> list[set[Hashable]]:
    """The keys of each thread, one set per thread, in thread order."""
    return [root.keys() for root in build_threads(messages, group_by_subject)]


def _prune(root: _C) -> list[_C]:
    """JWZ 4: drop empty ghosts, splice ghosts into their parent, keep a ghost root only if it joins several children."""
    stack: list[tuple[_C, bool]] = [(root, False)]
    while stack:                      # iterative post-order: reply chains can be deeper than the recursion limit
        c, done = stack.pop()
        if not done:
            stack.append((c, True))
            stack.extend((ch, False) for ch in c.children)
            continue
        kids: list[_C] = []
        for ch in c.children:
            if ch.msg is None:
                kids.extend(ch.children)
            else:
                kids.append(ch)
        for ch in kids:
            ch.parent = c
        c.children = kids
        c.date = c.msg.date if c.msg is not None else min((k.date for k in kids if k.date), default=None)
    if root.msg is None and len(root.children) < 2:
        for ch in root.children:
            ch.parent = None
        return root.children
    return [root]


def _join_components(roots: list[_C], msgs: list[ThreadInput]) -> list[_C]:
    """Put trees whose messages share ids (union-find over every id they carry) under one dummy root."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def id_of(m: ThreadInput) -> str:
        return m.message_id if m.message_id else f"\x00{id(m)}"

    for m in msgs:
        a = find(id_of(m))
        for other in m.in_reply_to + m.references:
            b = find(other)
            if a != b:
                parent[b] = a
    groups: dict[str, list[_C]] = {}
    for r in roots:
        first = next(c for c in _walk(r) if c.msg is not None)
        groups.setdefault(find(id_of(first.msg)), []).append(r)
    out = []
    for members in groups.values():
        out.append(_join(members))
    return out


def _join(members: list[_C]) -> _C:
    """One root as it is, or several under a dummy (id-less) root dated by the earliest."""
    if len(members) == 1:
        return members[0]
    dummy = _C(None)
    for r in members:
        dummy.adopt(r)
    dummy.date = min((r.date for r in members if r.date), default=None)
    return dummy


def _group_by_subject(roots: list[_C]) -> list[_C]:
    """JWZ 5, narrowed: a root message with no References/In-Reply-To and a reply subject joins the thread of that subject."""
    def orphan(r: _C) -> bool:
        m = r.msg
        return m is not None and not m.in_reply_to and not m.references and is_reply_subject(m.subject)

    def subject(r: _C) -> str:
        firsts = [c.msg for c in _walk(r) if c.msg is not None]
        first = min(firsts, key=lambda m: _order(m.date, m.message_id, m.key))
        return normalize_subject(first.subject)

    roots = sorted(roots, key=_sort_key)
    anchors: dict[str, _C] = {}
    for r in roots:
        s = subject(r)
        if s and not orphan(r):
            anchors.setdefault(s, r)
    strays: dict[str, list[_C]] = {}
    out = []
    for r in roots:
        s = subject(r)
        if s and orphan(r):
            if s in anchors:
                anchors[s].adopt(r)
                continue
            strays.setdefault(s, []).append(r)
            continue
        out.append(r)
    for members in strays.values():
        out.append(_join(members))
    return out


def _walk(root: _C) -> Iterator[_C]:
    stack = [root]
    while stack:
        c = stack.pop()
        yield c
        stack.extend(reversed(c.children))


def _sort_key(c: _C) -> tuple:
    key = c.msg.key if c.msg is not None else ""
    return _order(c.date, c.mid, key)


def _node(root: _C) -> ThreadNode:
    """Convert a container tree into ThreadNodes, siblings sorted by date (JWZ 6)."""
    top = ThreadNode(root.mid, root.msg.key if root.msg else None, [], root.date)
    stack = [(root, top)]
    while stack:
        c, node = stack.pop()
        for ch in sorted(c.children, key=_sort_key):
            child = ThreadNode(ch.mid, ch.msg.key if ch.msg else None, [], ch.date)
            node.children.append(child)
            stack.append((ch, child))
    return top
