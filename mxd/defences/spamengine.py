"""The spam engine: rspamd over its HTTP protocol (`POST /checkv2`), asked before the 250.

    verdict = await check(cfg, data, ip=..., helo=..., mail_from=..., rcpts=[...],
                          authentication_results=..., hostname=..., queue_id=...)

never raises: rspamd down, slow (cfg.rspamd_timeout, a deadline on the whole exchange), answering an HTTP
error or a body that is not rspamd's JSON gives SpamVerdict(action="accept", unscored=<why>), logged.

What rspamd is told (its protocol's request headers, rspamd 3.4 `protocol_internal.h`): `IP`, `Helo`,
`From` (the envelope sender), one `Rcpt` per recipient, `Queue-ID`, `Hostname` (the client's verified
reverse-DNS name, when the caller knows one), `MTA-Name` (mxd's own hostname) and, from the
Authentication-Results mxd already computed, `SPF`, `DKIM` and `DMARC` as rspamd's http_headers module
reads them (JSON: {"result": "pass"}, {"results": [{"result": "pass", "domain": "d"}]}): with that module
enabled (`local.d/http_headers.conf`: `enabled = true;`) rspamd takes mxd's results instead of redoing the
DNS work; without it those headers are ignored and rspamd checks for itself. A DMARC failure is not
passed on (its policy is not in the header), so rspamd's DMARC module evaluates it from the SPF and DKIM
results. `Pass: all` is not sent: rspamd may stop early once a verdict is certain (GTUBE, a reject).

Size: messages up to MAX_SCAN_BYTES (10 MiB) are sent whole; larger ones are not sent at all and are
accepted unscored ("too large to scan"). rspamd's own limit (`max_message`, 50 MiB by default) is higher
than mxd's message size limit, but scanning time grows with size while spam is almost always small
(SpamAssassin's spamc stops at 500 KB by default); a truncated MIME message would score its truncation.

Actions (rspamd's word -> mxd's): `reject` -> reject (550 5.7.1), `soft reject` -> soft_reject (451 4.7.1),
`add header`, `rewrite subject`, `quarantine`, `discard` -> quarantine (mxd never drops mail silently),
`greylist`, `no action` -> accept. Any other word is kept in engine_action and accepted with its score.

One httpx.AsyncClient (a connection pool) per event loop, created on first use; `aclose()` closes the
running loop's client at shutdown. `ping(cfg)` says whether rspamd answers (for health and doctor).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import authres
import httpx

from mxd.config import Config

log = logging.getLogger(__name__)

MAX_SCAN_BYTES = 10 * 1024 * 1024       # larger messages are accepted unscored (see the module docstring)
MAX_ANSWER_BYTES = 1024 * 1024          # rspamd answers a few KB; more is not its JSON
MAX_SYMBOLS = 300                       # kept with the message; rspamd 3.4 rarely reports more than 40
MAX_SYMBOL_NAME = 128
MAX_HEADER_VALUE = 2000
LOG_EVERY = 60.0                        # seconds between two log lines for the same kind of failure

ACTIONS = {
    "reject": "reject",
    "soft reject": "soft_reject",
    "add header": "quarantine",
    "rewrite subject": "quarantine",
    "quarantine": "quarantine",
    "discard": "quarantine",
    "greylist": "accept",
    "no action": "accept",
}


@dataclass(frozen=True)
class SpamVerdict:
    action: str                     # accept quarantine reject soft_reject (mxd's mapping of rspamd's action)
    score: float | None = None
    required_score: float | None = None
    engine_action: str = ""         # rspamd's own word: no action, greylist, add header, rewrite subject, ...
    symbols: dict[str, float] = field(default_factory=dict)
    unscored: str = ""              # why there is no score ("" when scored)
    seconds: float = 0.0            # time rspamd took
    message: str = ""               # rspamd's smtp_message (printable ASCII, short), e.g. "Gtube pattern"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "score": self.score, "required_score": self.required_score,
                "engine_action": self.engine_action, "symbols": self.symbols, "unscored": self.unscored or None,
                "seconds": round(self.seconds, 4), "message": self.message or None}


# ------------------------------------------------------------------ the request
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _value(text: str) -> bytes:
    """A header value rspamd and h11 accept: no control characters, UTF-8, bounded."""
    return _CONTROL.sub("", text).strip().encode("utf-8", "replace")[:MAX_HEADER_VALUE]


_SPF = {"pass": "pass", "fail": "fail", "softfail": "softfail", "neutral": "neutral", "none": "na",
        "permerror": "permfail"}
_DKIM = {"pass": "pass", "fail": "fail", "temperror": "tempfail", "permerror": "permfail", "neutral": "permfail",
         "policy": "permfail"}
_DMARC = {"pass": "pass", "none": "na", "temperror": "tempfail", "permerror": "permfail"}


def auth_headers(authentication_results: str) -> list[tuple[str, str]]:
    """rspamd's http_headers module's `SPF`, `DKIM`, `DMARC` request headers from an Authentication-Results
    body (RFC 8601, parsed with authres). Results rspamd could not use the same way are left out, so it
    checks them itself; an unparsable field gives no headers."""
    if not authentication_results.strip():
        return []
    try:
        parsed = authres.AuthenticationResultsHeader.parse_value(authentication_results[:8192])
        results = list(parsed.results)
    except Exception:          # authres raises its own errors (and others) on hostile fields
        return []
    out: list[tuple[str, str]] = []
    spf = [r for r in results if str(r.method).lower() == "spf"]
    if len(spf) == 1 and str(spf[0].result).lower() in _SPF:
        out.append(("SPF", json.dumps({"result": _SPF[str(spf[0].result).lower()]})))
    dkim_results = []
    for r in results:
        if str(r.method).lower() != "dkim":
            continue
        result = str(r.result).lower()
        if result == "none":
            continue
        domain = next((str(p.value) for p in r.properties if str(p.type) == "header" and str(p.name) == "d"), "")
        if result in _DKIM and re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", domain or "unknown"):
            dkim_results.append({"result": _DKIM[result], "domain": domain or "unknown"})
    if dkim_results:
        out.append(("DKIM", json.dumps({"results": dkim_results[:20]})))
    elif any(str(r.method).lower() == "dkim" for r in results):
        out.append(("DKIM", json.dumps({"result": "na"})))
    dmarc = [r for r in results if str(r.method).lower() == "dmarc"]
    if len(dmarc) == 1 and str(dmarc[0].result).lower() in _DMARC:
        out.append(("DMARC", json.dumps({"result": _DMARC[str(dmarc[0].result).lower()]})))
    return out


def request_headers(cfg: Config, *, ip: str, helo: str, mail_from: str, rcpts: list[str],
                    authentication_results: str = "", hostname: str = "", queue_id: str = "") -> list[tuple[bytes, bytes]]:
    """The rspamd protocol headers for one message (see the module docstring)."""
    headers: list[tuple[bytes, bytes]] = [(b"User-Agent", b"mxd")]
    try:
        headers.append((b"IP", str(ipaddress.ip_address(ip.strip().strip("[]"))).encode()))
    except ValueError:
        pass                                    # rspamd then scores without a client address
    if helo:
        headers.append((b"Helo", _value(helo)))
    headers.append((b"From", _value(mail_from)))  # "" is the null reverse-path (bounces)
    headers += [(b"Rcpt", _value(r)) for r in rcpts if _value(r)]
    if queue_id:
        headers.append((b"Queue-ID", _value(queue_id)))
    if hostname and hostname.lower().rstrip(".") != (cfg.hostname or "").lower().rstrip("."):
        headers.append((b"Hostname", _value(hostname)))   # the client's name; mxd's own is MTA-Name
    if cfg.hostname:
        headers.append((b"MTA-Name", _value(cfg.hostname)))
    headers += [(name.encode(), value.encode()) for name, value in auth_headers(authentication_results)]
    return headers


# ------------------------------------------------------------------ the answer
class BadAnswer(ValueError):
    """rspamd's answer is not the JSON it sends (the message says what is wrong)."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadAnswer(f"{what} is not a number")
    return float(value)


def _printable(text: str, limit: int) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:limit].strip()


def parse_answer(body: bytes, seconds: float = 0.0) -> SpamVerdict:
    """The verdict in a `/checkv2` JSON answer; raises BadAnswer when it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadAnswer(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise BadAnswer("not a JSON object")
    if isinstance(doc.get("error"), str):
        raise BadAnswer(f"rspamd error: {_printable(doc['error'], 120)}")
    engine_action = doc.get("action")
    if not isinstance(engine_action, str) or not engine_action.strip():
        raise BadAnswer("no action")
    engine_action = _printable(engine_action.lower(), 40)
    score = _number(doc.get("score"), "score")
    required = doc.get("required_score")
    required_score = _number(required, "required_score") if required is not None else None
    symbols: dict[str, float] = {}
    raw_symbols = doc.get("symbols", {})
    if not isinstance(raw_symbols, dict):
        raise BadAnswer("symbols is not an object")
    for name, sym in raw_symbols.items():
        if len(symbols) >= MAX_SYMBOLS:
            break
        value = sym.get("score") if isinstance(sym, dict) else sym
        try:
            symbols[_printable(str(name), MAX_SYMBOL_NAME)] = _number(value, f"symbol {name!r}")
        except BadAnswer:
            continue                            # one odd symbol does not spoil the score
    messages = doc.get("messages")
    smtp_message = messages.get("smtp_message") if isinstance(messages, dict) else None
    action = ACTIONS.get(engine_action)
    if action is None:
        log.warning("rspamd answered an action mxd does not know (%r): accepted with its score", engine_action)
        action = "accept"
    return SpamVerdict(action, score, required_score, engine_action, symbols, "", seconds,
                       _printable(smtp_message, 200) if isinstance(smtp_message, str) else "")


# ------------------------------------------------------------------ the client
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = weakref.WeakKeyDictionary()
_only: list[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = []   # for a loop without weak references
_last_logged: dict[str, float] = {}


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    try:
        client = _clients.get(loop)
    except TypeError:
        client = _only[0][1] if _only and _only[0][0] is loop else None
    if client is None or client.is_closed:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                                   trust_env=False, follow_redirects=False)
        try:
            _clients[loop] = client
        except TypeError:
            _only[:] = [(loop, client)]
    return client


async def aclose() -> None:
    """Close the running loop's client (its pooled connections to rspamd); a later check makes a new one."""
    loop = asyncio.get_running_loop()
    try:
        client = _clients.pop(loop, None)
    except TypeError:
        client = _only.pop()[1] if _only and _only[0][0] is loop else None
    if client is not None:
        await client.aclose()


def _unscored(kind: str, why: str, started: float) -> SpamVerdict:
    now = time.monotonic()
    if now - _last_logged.get(kind, -LOG_EVERY) >= LOG_EVERY:
        _last_logged[kind] = now
        log.warning("spam engine: message accepted unscored: %s", why)
    return SpamVerdict("accept", unscored=why, seconds=now - started)


def checkv2_url(base: str) -> str:
    return base.rstrip("/") + "/checkv2"


async def _ask(client: httpx.AsyncClient, url: str, data: bytes, headers: list[tuple[bytes, bytes]],
               timeout: float) -> tuple[int, bytes]:
    async with client.stream("POST", url, content=data, headers=headers, timeout=timeout) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise BadAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return response.status_code, bytes(body)


async def check(cfg: Config, data: bytes, *, ip: str, helo: str, mail_from: str, rcpts: list[str],
                authentication_results: str = "", hostname: str = "", queue_id: str = "") -> SpamVerdict:
    """rspamd's verdict on one message; accept/unscored when there is none (never raises).

    hostname: the client's verified reverse-DNS name (rspamd's `Hostname`), "" when unknown (rspamd then
    scores RDNS_NONE and HFILTER_HOSTNAME_UNKNOWN, as it does for any MTA that cannot name its client); mxd's
    own hostname given here is ignored (it is sent as `MTA-Name`, and is never the client's name).
    authentication_results: the Authentication-Results body mxd computed for this message."""
    started = time.monotonic()
    if not cfg.rspamd_url:
        return SpamVerdict("accept", unscored="no spam engine configured")
    if len(data) > MAX_SCAN_BYTES:
        return _unscored("size", f"too large to scan ({len(data)} bytes > {MAX_SCAN_BYTES})", started)
    timeout = cfg.rspamd_timeout
    try:
        headers = request_headers(cfg, ip=ip, helo=helo, mail_from=mail_from, rcpts=rcpts,
                                  authentication_results=authentication_results, hostname=hostname,
                                  queue_id=queue_id)
        async with asyncio.timeout(timeout):
            status, body = await _ask(_client(), checkv2_url(cfg.rspamd_url), data, headers, timeout)
    except (TimeoutError, httpx.TimeoutException):
        return _unscored("timeout", f"rspamd did not answer within {timeout:g}s", started)
    except httpx.ConnectError as e:
        return _unscored("connect", f"cannot connect to rspamd: {_printable(str(e), 120) or type(e).__name__}",
                         started)
    except BadAnswer as e:
        return _unscored("answer", f"bad answer from rspamd: {e}", started)
    except httpx.HTTPError as e:
        return _unscored("http", f"HTTP error talking to rspamd: {type(e).__name__}", started)
    except Exception as e:                      # a bug here must not cost a message
        log.exception("spam engine check failed")
        return _unscored("internal", f"internal error: {type(e).__name__}", started)
    seconds = time.monotonic() - started
    if status != 200:
        try:
            detail = parse_answer(body).engine_action
        except BadAnswer as e:
            detail = str(e)
        return _unscored("status", f"rspamd answered HTTP {status} ({detail})", started)
    try:
        return parse_answer(body, seconds)
    except BadAnswer as e:
        return _unscored("answer", f"bad answer from rspamd: {e}", started)


async def ping(cfg: Config) -> str:
    """"" when rspamd answers `GET /ping` with pong within rspamd_timeout, else why not (for health and doctor)."""
    if not cfg.rspamd_url:
        return "no spam engine configured"
    try:
        async with asyncio.timeout(cfg.rspamd_timeout):
            response = await _client().get(cfg.rspamd_url.rstrip("/") + "/ping", timeout=cfg.rspamd_timeout)
    except (TimeoutError, httpx.TimeoutException):
        return f"rspamd did not answer within {cfg.rspamd_timeout:g}s"
    except httpx.HTTPError as e:
        return f"cannot reach rspamd: {_printable(str(e), 120) or type(e).__name__}"
    if response.status_code != 200 or response.text.strip() != "pong":
        return f"rspamd answered HTTP {response.status_code} {_printable(response.text, 40)!r} to /ping"
    return ""
