"""The HTTP client of the `mxd` command: one base URL and bearer token, JSON in and out, and the API's
structured errors (`{"error": {"code", "message", "fix"}}`) raised as ApiError."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

import httpx

DEFAULT_URL = "http://127.0.0.1:8025"
UPLOAD_CHUNK = 64 * 1024


class ApiError(Exception):
    """An error answer of the API (or a failure to reach it), with the fields the CLI prints."""

    def __init__(self, code: str, message: str, fix: str | None = None, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fix = fix
        self.status = status


class Client:
    """Calls one mxd daemon's API. `url` and `token` default to $MXD_URL and $MXD_TOKEN."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("MXD_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("MXD_TOKEN", "")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ requests
    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = None,
                upload: Callable[[int, int], None] | None = None) -> httpx.Response:
        """Send one request; returns the response when its status is below 400, raises ApiError otherwise.

        With `upload`, the JSON body is streamed in chunks and upload(sent, total) is called after each."""
        if not self.token:
            raise ApiError("unauthorized", "no API token: MXD_TOKEN is not set",
                           fix="export MXD_TOKEN=<token> (mxd init printed the admin token), or pass --token.")
        sent_headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        sent_headers.update(headers or {})
        content: bytes | Iterator[bytes] | None = None
        if body is not None:
            data = json.dumps(body).encode()
            sent_headers["Content-Type"] = "application/json"
            sent_headers["Content-Length"] = str(len(data))
            content = _chunks(data, upload) if upload else data
        query = {k: v for k, v in (params or {}).items() if v is not None and v != [] and v != ""}
        extra = {} if timeout is None else {"timeout": timeout}
        try:
            resp = self._http.request(method, path, params=query, content=content, headers=sent_headers, **extra)
        except httpx.ConnectError as exc:
            raise ApiError("unreachable", f"cannot connect to the mxd API at {self.url} ({_reason(exc)})",
                           fix="Start the daemon (mxd serve), or set MXD_URL (or --url) to its HTTP address.") \
                from None
        except httpx.TimeoutException:
            raise ApiError("timeout", f"no answer from {self.url}{path} in time",
                           fix="The daemon may be overloaded; retry, and check the mxd log.") from None
        except httpx.HTTPError as exc:
            raise ApiError("unreachable", f"{method} {self.url}{path} failed: {exc}",
                           fix="Check MXD_URL (or --url): it must be the daemon's HTTP address.") from None
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (None for an empty body, as after a 204)."""
        resp = self.request(method, path, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError("bad_response", f"{method} {path} answered {resp.status_code} without JSON",
                           fix="Check MXD_URL (or --url): it must be the daemon's HTTP address.",
                           status=resp.status_code) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.json("GET", path, params=params)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.json("POST", path, body=body if body is not None else {}, **kwargs)

    def put(self, path: str, body: Any) -> Any:
        return self.json("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.json("DELETE", path)

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict]:
        """Every page of a list answer ({"data": [...], "next_cursor": ...}), following the cursors."""
        query = dict(params or {})
        while True:
            answer = self.json("GET", path, params=query)
            yield answer
            cursor = answer.get("next_cursor") if isinstance(answer, dict) else None
            if not cursor:
                return
            query["cursor"] = cursor


def _chunks(data: bytes, upload: Callable[[int, int], None]) -> Iterator[bytes]:
    for start in range(0, len(data), UPLOAD_CHUNK):
        chunk = data[start:start + UPLOAD_CHUNK]
        yield chunk
        upload(start + len(chunk), len(data))


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else (text or type(exc).__name__)


def _error_of(resp: httpx.Response) -> ApiError:
    try:
        err = resp.json()["error"]
        return ApiError(str(err.get("code") or "error"), str(err.get("message") or ""), err.get("fix"),
                        resp.status_code)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = " ".join(resp.text.split())[:200]
        return ApiError(f"http_{resp.status_code}", f"{resp.request.method} {resp.request.url.path} answered "
                        f"HTTP {resp.status_code}" + (f": {text}" if text else ""),
                        fix="Check MXD_URL (or --url): it must be the daemon's HTTP address.",
                        status=resp.status_code)
