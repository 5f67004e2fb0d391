"""Threat: one message, SMTP reply, DNS record or API body built to make a regular expression backtrack
(overlapping quantifiers: `a*b*` over the same characters, `\\s*X\\s*` retried from every position) holds
a worker, the event loop or the store's single writer for seconds to hours: quadratic time is enough
(`From: a` + 56 folded lines of 990 spaces + ` <` took 5.8 s in the old From check).

Every regular expression in mxd that sees outside input is listed in CASES, run through the code that
applies it, with inputs built to make it backtrack, at 1k, 4k, 16k and 64k characters; time must grow
no faster than linearly (a generous ratio, min of several runs). `test_every_pattern_is_listed` keeps
the list whole: a new compiled pattern in these modules must be added here (or to NOT_OUTSIDE_INPUT
with the reason)."""
from __future__ import annotations

import re
import time
from typing import Any, Callable

import pytest

from mxd import address, dkimsign, ingest, sending, smtpclient
from mxd.authn import dmarc, results, spf
from mxd.delivery import bounces, dsn
from mxd.mime import compose, header, parse, threading
from mxd.smtpserver import fast
from mxd.store import orgs, search

SIZES = (1_000, 4_000, 16_000, 64_000)
RATIO = 8.0             # linear is 4 per step; quadratic 16
FLOOR = 0.05            # seconds at 64k under which the curve is cache and scheduler noise: a quadratic
                        # pass over 64k characters takes seconds
CEILING = 2.0           # seconds for one run at any size: a linear pass over 64k is milliseconds


def _message(head: bytes) -> bytes:
    return head + b"\r\nSubject: s\r\n\r\nbody\r\n"


# (name, what to run, input of about n characters). Each names the pattern(s) it drives.
CASES: list[tuple[str, Callable[[Any], Any], Callable[[int], Any]]] = [
    # the From check, the header splitter and the parser (message input)
    ("sending.SIMPLE_FROM", sending.SIMPLE_FROM.fullmatch, lambda n: "a" + " " * n + " <"),
    ("sending.SIMPLE_FROM names", sending.SIMPLE_FROM.fullmatch, lambda n: "a " * (n // 2) + "<a@b"),
    ("sending.authors_of", lambda m: _refused(sending.authors_of, m),
     lambda n: _message(b"From: a" + b"".join(b"\r\n" + b" " * 990 for _ in range(n // 990)) + b" <")),
    ("sending.authors_of long header", lambda m: _refused(sending.authors_of, m),
     lambda n: _message(b"From: a@b.test\r\n" + b"X: y\r\n" * (n // 6))),
    ("header.split", header.split, lambda n: _message(b"X:" + b"\r\n " * (n // 3))),
    ("header.split lines", header.split, lambda n: _message(b"From : a\r\n" * (n // 10))),
    ("parse.parse From", parse.parse, lambda n: _message(b"From: a" + b" " * n + b" <")),
    ("parse.parse comments", parse.parse, lambda n: _message(b"From: " + b"(a" * (n // 2))),
    ("parse.parse quotes", parse.parse, lambda n: _message(b'From: "' + b"\\" * n)),
    ("parse.parse angles", parse.parse, lambda n: _message(b"From: " + b"<" * n)),
    ("parse._ENCODED_WORD", lambda s: parse._words(s, "x", parse._Defects()), lambda n: "=?" + "a" * n),
    ("parse._ENCODED_WORD open", lambda s: parse._words(s, "x", parse._Defects()), lambda n: "=?a?q?" + "a" * n),
    ("parse._ANGLE_ID _COMMENT _BARE_SPLIT", parse._msgids, lambda n: "(" + "a " * (n // 2)),
    ("parse._ANGLE_ID open", parse._msgids, lambda n: "<" * n),
    ("parse._PADDING", lambda b: parse._PADDING.match(b), lambda n: b" " * n + b"x"),
    ("parse._PADDING boundaries", parse.parse,
     lambda n: b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + (b"--b" + b" " * 50 + b"x\r\n") * (n // 56)),
    ("parse._B64_JUNK", lambda b: parse._b64(b, parse._Defects(), "x"), lambda n: b"!" * n + b"a"),
    ("parse._TAG", parse.html_to_text, lambda n: "<a" + "b" * n),
    ("parse._TAG quoted", parse.html_to_text, lambda n: '<a "' + ">" * n),
    ("parse._TAG attributes", parse.html_to_text, lambda n: "<a " + "b=c " * (n // 4)),
    ("parse._HIDDEN _CLOSERS", parse.html_to_text, lambda n: "<script" * (n // 7)),
    ("parse._SPACES _BLANKS", parse.html_to_text, lambda n: " \n" * (n // 2) + "x"),
    # subjects (threading, replies) and API bodies (compose)
    ("threading._PREFIX", threading.normalize_subject, lambda n: "re" + " " * n + "x"),
    ("threading._PREFIX tags", threading.normalize_subject, lambda n: "[" * n),
    ("threading suffix", threading.normalize_subject, lambda n: "a" + " " * n + "x"),
    ("compose._REPLY_PREFIX", compose.reply_subject, lambda n: "re" + " " * n + "x"),
    ("compose._REPLY_PREFIX repeated", compose.reply_subject, lambda n: "re[1] " * (n // 6)),
    ("compose._CONTENT_TYPE", compose._CONTENT_TYPE.fullmatch, lambda n: "text/plain" + " " * n + "x"),
    ("compose._CONTENT_TYPE params", compose._CONTENT_TYPE.fullmatch, lambda n: "a/b" + " ; a=b" * (n // 6) + " ;x"),
    ("compose._WS_TOKENS", lambda s: list(compose._WS_TOKENS.finditer(s)), lambda n: " " * n),
    ("compose._ATOM_PHRASE", compose._ATOM_PHRASE.fullmatch, lambda n: "a " * (n // 2) + "!"),
    ("compose._PLAIN _INJECTION", lambda s: (compose._PLAIN.fullmatch(s), compose._INJECTION.search(s)),
     lambda n: "a" * n + "\x01"),
    ("compose._FIELD_NAME _MSGID", lambda s: (compose._FIELD_NAME.fullmatch(s), compose._MSGID.fullmatch(s)),
     lambda n: "a" * n + ">"),
    # bounces (DSN parsing)
    ("dsn._TYPED trailing comment", dsn._typed_value, lambda n: "rfc822; a" + " " * n + "x"),
    ("dsn trailing comment", dsn._typed_value, lambda n: "rfc822; " + "(" * n + ")"),
    ("dsn._FALLBACK", dsn._fallback, lambda n: b"content-type: message/delivery-status\n" * (n // 39)),
    ("dsn._MSGID", lambda s: dsn._MSGID.findall(s), lambda n: "<" * n),
    ("dsn._STATUS bounces._STATUS", lambda s: (dsn._STATUS.search(s), bounces._STATUS.search(s)),
     lambda n: "5." * (n // 2)),
    ("dsn.parse_dsn", dsn.parse_dsn, lambda n: _message(b"Content-Type: message/delivery-status")
     + b"Final-Recipient: rfc822; a" + b" " * n + b"\r\n"),
    # SPF and DMARC records, Authentication-Results values (DNS input)
    ("spf toplabel", spf._ends_in_toplabel, lambda n: "." + "a" * n + "!"),
    ("spf toplabel digits", spf._ends_in_toplabel, lambda n: "." + "1" * n),
    ("spf._MODIFIER _MECHANISM", lambda s: (spf._MODIFIER.match(s), spf._MECHANISM.match(s)), lambda n: "a" * n + "\n"),
    ("spf._DUAL_CIDR", spf._DUAL_CIDR.match, lambda n: ":" + "/" * n + "x"),
    ("spf._MACRO_TOKEN", lambda s: spf._MACRO_TOKEN.match(s), lambda n: "%{d" + "1" * n),
    ("spf._LABEL dmarc._LABEL", lambda s: (spf._LABEL.match(s), dmarc.normalize_domain(s)), lambda n: "a" * n + "!"),
    ("dmarc._VERSION", dmarc._VERSION.match, lambda n: "v" + " " * n + "x"),
    ("dmarc rua", dmarc._has_mailto, lambda n: "mailto:" * (n // 7)),
    ("dmarc.author_domain", dmarc.author_domain, lambda n: _message(b"From: a" + b" " * n + b" <")),
    ("results._TOKEN _DOMAIN _BASE64 _ADDRESS",
     lambda s: [p.match(s) for p in (results._TOKEN, results._DOMAIN, results._BASE64, results._ADDRESS)],
     lambda n: "a" * n + "@" + "a" * 10 + " "),
    # SMTP paths and replies, addresses, line ends, search queries
    ("fast._SIMPLE_PATH", fast._SIMPLE_PATH.match, lambda n: " " * n + "x"),
    ("fast._SIMPLE_PATH dots", fast._SIMPLE_PATH.match, lambda n: "<" + "a." * (n // 2) + "@b"),
    ("address._DOT_ATOM _LABEL", lambda s: (address._DOT_ATOM.fullmatch(s), address._LABEL.fullmatch(s)),
     lambda n: "a." * (n // 2) + "!"),
    ("smtpclient._ENHANCED", smtpclient._ENHANCED.search, lambda n: "5.1." * (n // 4)),
    ("smtpclient._BARE_EOL _LEADING_DOT _BAD_PATH",
     lambda b: (smtpclient._BARE_EOL.sub(b"\r\n", b), smtpclient._LEADING_DOT.sub(b"..", b),
                smtpclient._BAD_PATH.search(b.decode())), lambda n: b"\r.\n" * (n // 3)),
    ("ingest._BARE dkimsign._LINE_END _WSP", lambda b: (ingest._BARE.sub(b"\r\n", b), dkimsign._LINE_END.sub(b"", b),
                                                       dkimsign._WSP.sub(b" ", b)), lambda n: b"\r \t\n" * (n // 4)),
    ("search._TERM", lambda s: list(search._TERM.finditer(s)), lambda n: 'from:"' * (n // 6) + "a"),
    ("orgs.SLUG", orgs.SLUG.match, lambda n: "a-" * (n // 2) + "!"),
]

# Compiled patterns in these modules that never see outside input.
NOT_OUTSIDE_INPUT = {
    "mxd.mime.threading._WORDS",        # a str, built from a fixed list
}

MODULES = (address, dkimsign, ingest, orgs, sending, smtpclient, dmarc, results, spf, bounces, dsn, compose,
           header, parse, threading, fast, search)


def _refused(fn: Callable[[Any], Any], arg: Any) -> Any:
    try:
        return fn(arg)
    except ValueError:
        return None


def _best(fn: Callable[[Any], Any], arg: Any, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(arg)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        assert elapsed < CEILING, f"one run took {elapsed:.1f} s on {len(arg)} characters"
    return best


@pytest.mark.parametrize("name, fn, make", CASES, ids=[c[0] for c in CASES])
def test_time_grows_linearly(name, fn, make):
    times = [_best(fn, make(n)) for n in SIZES]
    if times[-1] < FLOOR:
        return
    assert times[-1] / max(times[-2], 1e-6) < RATIO, \
        f"{name}: " + ", ".join(f"{n}: {t * 1000:.2f} ms" for n, t in zip(SIZES, times))


def test_every_pattern_is_listed():
    """A compiled pattern at module level in these modules is either driven by a case above (named in
    it: `parse._ANGLE_ID _COMMENT` names parse._ANGLE_ID and parse._COMMENT) or declared free of
    outside input."""
    covered = set()
    for name, _, _ in CASES:
        module = ""
        for word in name.split():
            if "." in word:
                module, _, word = word.partition(".")
            if module:
                covered.add(f"{module}.{word}")
    missing = [f"{module.__name__}.{attr}" for module in MODULES for attr, value in vars(module).items()
               if isinstance(value, re.Pattern) and f"{module.__name__}.{attr}" not in NOT_OUTSIDE_INPUT
               and f"{module.__name__.rpartition('.')[2]}.{attr}" not in covered]
    assert not missing, f"patterns without a complexity case: {missing}"
