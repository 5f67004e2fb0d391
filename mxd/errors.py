"""MxdError and the one table of error codes, each with its HTTP status and SMTP reply."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    http: int
    smtp: str          # full SMTP reply line used when this error ends an SMTP command
    fix: str           # default advice for the operator or agent


CODES: dict[str, Code] = {
    "bad_request": Code(400, "501 5.5.4 Syntax error in parameters", "Check the request body against /openapi.json."),
    "invalid_json": Code(400, "501 5.5.4 Syntax error", "Send a JSON object with Content-Type: application/json."),
    "invalid_address": Code(400, "553 5.1.3 Bad address syntax", "Use an address of the form local@domain."),
    "unauthorized": Code(401, "535 5.7.8 Authentication credentials invalid", "Send 'Authorization: Bearer <token>' with a valid token."),
    "forbidden": Code(403, "550 5.7.1 Not permitted", "Use a token with the scope this call needs."),
    "not_found": Code(404, "550 5.1.1 Not found", "Check the id or address; a token only sees its own mailboxes."),
    "conflict": Code(409, "550 5.7.1 Conflict", "The object exists already; fetch it instead of creating it."),
    "domain_not_served": Code(422, "550 5.7.1 Relay denied", "Create the domain first: POST /api/domains."),
    "payload_too_large": Code(413, "552 5.3.4 Message too big", "Send a smaller body."),
    "rate_limited": Code(429, "451 4.7.1 Rate limited, try again later", "Wait for Retry-After seconds."),
    "internal": Code(500, "451 4.3.0 Internal error, try again later", "Retry; if it persists, check the mxd log."),
}


class MxdError(Exception):
    """An error with a stable code, a message for humans and a fix."""

    def __init__(self, code: str, message: str, fix: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        spec = CODES.get(code, CODES["internal"])
        self.code = code
        self.message = message
        self.fix = fix or spec.fix
        self.status = status or spec.http
        self.smtp = spec.smtp

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "fix": self.fix}}
