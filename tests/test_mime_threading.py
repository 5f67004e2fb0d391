"""Tests of mxd.mime.threading: subject normalisation, JWZ trees on the notmuch corpora, and id-graph properties."""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.mime.parse import parse
from mxd.mime.threading import (
    ThreadInput,
    ThreadNode,
    build_threads,
    is_reply_subject,
    normalize_subject,
    partition,
)
from tests.support.corpora import CORPUS, corpus_files

UTC = timezone.utc
T0 = datetime(2020, 1, 1, tzinfo=UTC)


# --- subjects ----------------------------------------------------------------------

@pytest.mark.parametrize("subject, normalized, reply", [
    ("Hello", "hello", False),
    ("Re: Hello", "hello", True),
    ("RE: RE: Hello", "hello", True),
    ("re:re:Hello", "hello", True),
    ("Re[2]: Hello", "hello", True),
    ("Re(3): Hello", "hello", True),
    ("Re^2: Hello", "hello", True),
    ("Fwd: Re: Hello", "hello", True),
    ("FW: Hello", "hello", True),
    ("Fw: Hello", "hello", True),
    ("AW: WG: Hallo  Welt", "hallo welt", True),
    ("SV: VS: Hei", "hei", True),
    ("Antw: Hallo", "hallo", True),
    ("RIF: Ciao", "ciao", True),
    ("TR: Réf : Bonjour", "bonjour", True),
    ("RÉF: Bonjour", "bonjour", True),
    ("RE : Bonjour", "bonjour", True),
    ("回复：你好", "你好", True),
    ("转发: 你好", "你好", True),
    ("Ynt: Merhaba", "merhaba", True),
    ("ODP: Cześć", "cześć", True),
    ("[notmuch] Re: Working with Maildir storage?", "working with maildir storage?", True),
    ("Re: [notmuch] Working with Maildir storage?", "working with maildir storage?", True),
    ("Fwd: [list] Re: [list] Hello", "hello", True),
    ("[notmuch] archive", "archive", False),
    ("Hello (fwd)", "hello", True),
    ("Straße\t und\n  Weg", "strasse und weg", False),
    ("Reply: hi", "reply: hi", False),
    ("Re-design: x", "re-design: x", False),
    ("Result: ok", "result: ok", False),
    ("Re:", "", True),
    ("", "", False),
])
def test_subject_normalisation(subject: str, normalized: str, reply: bool) -> None:
    assert normalize_subject(subject) == normalized
    assert is_reply_subject(subject) is reply


# --- corpus helpers ------------------------------------------------------------------

def inputs(sub: str) -> list[ThreadInput]:
    return [ThreadInput.from_parsed(str(p.relative_to(CORPUS)), parse(p.read_bytes())) for p in corpus_files(sub)]


_ID = re.compile(r"<([^<>\s]+)>")


def expected_partition(paths: list[Path]) -> list[set[str]]:
    """What the headers say, independently of mxd.mime: union-find over every id in Message-ID, In-Reply-To, References."""
    links = []
    for path in paths:
        h = BytesHeaderParser(policy=compat32).parsebytes(path.read_bytes())
        ids = _ID.findall(str(h.get("Message-ID", "")))[:1]
        ids += _ID.findall(" ".join(str(v) for v in h.get_all("In-Reply-To", []) + h.get_all("References", [])))
        links.append((str(path.relative_to(CORPUS)), ids))
    return linked(links)


def linked(links: list[tuple[str, list[str]]]) -> list[set[str]]:
    """Union-find over (key, ids): the keys joined by a shared id, directly or through others."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for key, ids in links:
        for i in ids:
            a, b = find("key:" + key), find("id:" + i)
            if a != b:
                parent[a] = b
    groups: dict[str, set[str]] = {}
    for key, _ in links:
        groups.setdefault(find("key:" + key), set()).add(key)
    return canon(groups.values())


def canon(sets) -> list[set]:
    return sorted((set(s) for s in sets), key=lambda s: sorted(map(str, s)))


def shape(node: ThreadNode) -> tuple:
    return (node.message_id, node.key, tuple(shape(c) for c in node.children))


def ids(node: ThreadNode) -> tuple:
    """(message_id, [children]) with ghosts marked."""
    label = node.message_id if node.key is not None else f"ghost:{node.message_id}"
    return (label, [ids(c) for c in node.children])


# --- corpora: partitions --------------------------------------------------------------

@pytest.mark.parametrize("sub", ["threading", "default", "duplicate", "broken/loop", ""])
def test_partition_matches_the_headers(sub: str) -> None:
    got = canon(partition(inputs(sub)))
    assert got == expected_partition(corpus_files(sub))


def test_default_corpus_thread_count() -> None:
    threads = build_threads(inputs("default"))
    assert len(threads) == len(expected_partition(corpus_files("default")))
    assert sum(len(t.keys()) for t in threads) == len(corpus_files("default"))
    dates = [t.date for t in threads]
    assert dates == sorted(dates)                           # roots sorted by date


# --- corpora: specific trees -----------------------------------------------------------

def test_ghost_root_threads() -> None:
    threads = [ids(t) for t in build_threads(inputs("threading/ghost-root"))]
    assert threads == [
        ("000-real-root@example.org", [
            ("001-child@example.org", [
                ("001-fake-message-root@example.org", []),   # under the spliced ghost <nonexistent-message@...>
                ("001-grand-child@example.org", [("001-great-grand-child@example.org", [])]),
                ("001-grand-child2@example.org", []),
            ]),
        ]),
        # RT: the ticket id is only ever referenced; it is the ghost root joining the FYI mail and the resolution
        ("ghost:RT-Ticket-33575@xxxxxxx-xxxxxxxxxxxxxxxxx-xxxxxxxxx-xxxxxxxxx.de", [
            ("87bmc6lp3h.fsf@len.workgroup", [
                ("rt-4.2.8-22046-1529425595-591.33575-211-0@xxxxxxx-xxxxxxxxxxxxxxxxx-xxxxxxxxx-xxxxxxxxx.de", []),
            ]),
            ("rt-4.2.8-6644-1530017064-1465.33575-215-0@xxxxxxx-xxxxxxxxxxxxxxxxx-xxxxxxxxx-xxxxxxxxx.de", []),
        ]),
    ]
    ghost = build_threads(inputs("threading/ghost-root"))[1]
    assert ghost.key is None and ghost.date == datetime(2016, 6, 19, 16, 26, 26, tzinfo=UTC)


def test_parent_priority_trusts_a_single_in_reply_to() -> None:
    # child: In-Reply-To <B00-root>, References <B00--root> (typo);  grand-child: References in reverse order
    threads = [ids(t) for t in build_threads(inputs("threading/parent-priority"))]
    assert threads == [
        ("B00-root@example.org", [("B01-child@example.org", [("B01-grand-child@example.org", [])])]),
    ]


def test_reference_loop_terminates_with_the_oldest_as_root() -> None:
    start = time.perf_counter()
    threads = [ids(t) for t in build_threads(inputs("broken/loop"))]
    assert time.perf_counter() - start < 1.0
    assert threads == [("mid-loop-12@example.org", [("mid-loop-21@example.org", [])])]


def test_duplicate_message_ids_keep_every_copy() -> None:
    threads = build_threads(inputs("duplicate"))
    assert [len(t.keys()) for t in threads] == [2, 2, 5]
    third = threads[2]
    assert third.key == "duplicate/msg-3-1:2,"                # the first copy owns the id ...
    assert [c.key for c in third.children] == ["duplicate/msg-3-2:2,", "duplicate/msg-3-3:2,",
                                               "duplicate/msg-3-4:2,", "duplicate/msg-3-5:2,"]   # ... later ones hang below


# --- order independence -------------------------------------------------------------

CORPUS_INPUTS = inputs("threading") + inputs("default") + inputs("duplicate") + inputs("broken/loop")
CORPUS_SHAPE = [shape(t) for t in build_threads(CORPUS_INPUTS)]


@settings(max_examples=60, deadline=None)
@given(st.permutations(CORPUS_INPUTS))
def test_shuffled_corpus_gives_the_same_threads(shuffled: list[ThreadInput]) -> None:
    assert [shape(t) for t in build_threads(shuffled)] == CORPUS_SHAPE


# --- synthetic cases ------------------------------------------------------------------

def m(key: str, mid: str | None, irt: list[str] = (), refs: list[str] = (), subject: str = "", day: int = 0) -> ThreadInput:
    return ThreadInput(key, mid, list(irt), list(refs), subject, T0 + timedelta(days=day))


def test_ghost_between_messages_is_spliced_and_single_ghost_root_promoted() -> None:
    threads = build_threads([m("b", "b@x", refs=["gone@x", "a-gone@x"], day=1), m("c", "c@x", irt=["b@x"], day=2)])
    assert [ids(t) for t in threads] == [("b@x", [("c@x", [])])]


def test_self_reference_and_missing_message_id() -> None:
    threads = build_threads([
        m("a", "a@x", refs=["a@x"]),                         # references itself
        m("n1", None, irt=["a@x"], day=1),                   # no Message-ID, still a reply
        m("n2", None, day=2),
    ])
    assert [(t.key, [c.key for c in t.children]) for t in threads] == [("a", ["n1"]), ("n2", [])]


def test_three_message_loop_through_references() -> None:
    msgs = [m("a", "a@x", refs=["c@x"], day=0), m("b", "b@x", refs=["a@x"], day=1), m("c", "c@x", refs=["b@x"], day=2)]
    assert [ids(t) for t in build_threads(msgs)] == [("a@x", [("b@x", [("c@x", [])])])]


def test_trees_sharing_only_an_id_get_a_dummy_root() -> None:
    # x says its parent is p; y's References put q before p; q is also the parent of z (In-Reply-To wins for x)
    msgs = [m("p", "p@x", day=0), m("x", "x@x", irt=["p@x"], refs=["q@x"], day=1), m("z", "z@x", irt=["q@x"], day=2)]
    threads = build_threads(msgs)
    assert [t.keys() for t in threads] == [{"p", "x", "z"}]
    assert threads[0].message_id is None and threads[0].key is None
    assert [ids(c) for c in threads[0].children] == [("p@x", [("x@x", [])]), ("z@x", [])]


def test_deep_reply_chain() -> None:
    n = 20000
    msgs = [m(str(i), f"{i}@x", irt=[f"{i - 1}@x"] if i else [], refs=[f"{j}@x" for j in range(max(0, i - 10), i)],
              day=0) for i in range(n)]
    for i, x in enumerate(msgs):
        x.date = T0 + timedelta(seconds=i)
    start = time.perf_counter()
    threads = build_threads(msgs)
    assert time.perf_counter() - start < 10.0
    assert len(threads) == 1 and len(threads[0].keys()) == n
    depth, node = 0, threads[0]
    while node.children:
        node, depth = node.children[0], depth + 1
    assert depth == n - 1


def test_subject_grouping_is_opt_in_and_only_for_orphan_replies() -> None:
    msgs = [
        m("a", "a@x", subject="Hello", day=0),
        m("b", "b@x", subject="Re: Hello", day=1),           # orphan reply: joins a when grouping
        m("c", "c@x", irt=["a@x"], subject="Re: Hello", day=2),
        m("f", "f@x", subject="Hello", day=3),               # not a reply: never grouped by subject
        m("d", "d@x", subject="Re: Other", day=4),
        m("e", "e@x", subject="RE: [list] other", day=5),
    ]
    assert canon(partition(msgs)) == canon([{"a", "c"}, {"b"}, {"f"}, {"d"}, {"e"}])
    grouped = build_threads(msgs, group_by_subject=True)
    assert canon(t.keys() for t in grouped) == canon([{"a", "b", "c"}, {"f"}, {"d", "e"}])
    assert [c.key for c in grouped[0].children] == ["b", "c"]
    dummy = [t for t in grouped if t.keys() == {"d", "e"}][0]
    assert dummy.key is None and dummy.message_id is None


def test_naive_and_missing_dates_sort() -> None:
    msgs = [m("a", "a@x", day=2), ThreadInput("b", "b@x", [], [], "", datetime(2020, 1, 1)), ThreadInput("c", "c@x")]
    assert [t.key for t in build_threads(msgs)] == ["b", "a", "c"]


# --- property: any id graph -------------------------------------------------------------

POOL = [f"m{i}@x" for i in range(12)]


@st.composite
def id_graphs(draw: st.DrawFn) -> list[ThreadInput]:
    n = draw(st.integers(1, 14))
    out = []
    for k in range(n):
        mid = draw(st.none() | st.sampled_from(POOL))
        irt = draw(st.lists(st.sampled_from(POOL), max_size=2))
        refs = draw(st.lists(st.sampled_from(POOL), max_size=5))
        day = draw(st.none() | st.integers(0, 5))
        out.append(ThreadInput(f"k{k}", mid, irt, refs, draw(st.sampled_from(["x", "Re: x", "y"])),
                               None if day is None else T0 + timedelta(days=day)))
    return out


def union_find(msgs: list[ThreadInput]) -> list[set[str]]:
    return linked([(x.key, ([x.message_id] if x.message_id else []) + x.in_reply_to + x.references) for x in msgs])


@settings(max_examples=400, deadline=None)
@given(id_graphs(), st.randoms(use_true_random=False))
def test_any_id_graph(msgs: list[ThreadInput], rnd) -> None:
    threads = build_threads(msgs)
    keys = [n.key for t in threads for n in t.walk() if n.key is not None]
    assert sorted(keys) == sorted(x.key for x in msgs)      # every message exactly once, no loops
    assert canon(t.keys() for t in threads) == union_find(msgs)
    shuffled = list(msgs)
    rnd.shuffle(shuffled)
    assert [shape(t) for t in build_threads(shuffled)] == [shape(t) for t in threads]
    grouped = build_threads(msgs, group_by_subject=True)
    assert sorted(n.key for t in grouped for n in t.walk() if n.key is not None) == sorted(x.key for x in msgs)
