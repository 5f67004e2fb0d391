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
    "ambiguous_header": Code(400, "554 5.6.0 Message header refused", "Write every header field as 'Name: value' (no space before the colon, no mbox 'From ' line, lines of at most 998 characters, UTF-8), with one short From field."),
    "header_injection": Code(400, "550 5.6.0 CR or LF in a header field refused", "Remove CR and LF characters from header values."),
    "sender_not_allowed": Code(403, "550 5.7.1 Sender address not allowed for this token", "Send as a mailbox the token was given (mailboxes of POST /api/tokens)."),
    "domain_not_ready": Code(422, "550 5.7.1 Sender domain not ready for outbound mail", "Publish the DNS records from GET /api/domains/{domain}/dns-plan, or PUT /api/domains/{domain}/readiness {\"ready\": true}."),
    "outbound_disabled": Code(503, "550 5.7.1 Outbound mail is disabled on this server", "Set outbound_enabled = true (MXD_OUTBOUND_ENABLED) and restart."),
    "too_many_recipients": Code(422, "550 5.5.3 Too many recipients", "Send to fewer recipients, or raise max_recipients_per_send."),
    "daily_cap_reached": Code(429, "451 4.7.1 Daily sending cap reached, try again later", "Wait until the rolling 24-hour window frees up, or raise daily_send_cap."),
    "recipient_suppressed": Code(422, "550 5.7.1 Recipient is on the suppression list", "Remove it with DELETE /api/suppressions/{address} if it is deliverable again."),
    "unknown_recipient": Code(422, "550 5.1.1 No such local recipient", "Check the address; this domain is served here and has no such mailbox."),
    "idempotency_conflict": Code(409, "550 5.7.1 Conflict", "Use a new Idempotency-Key for a different request body."),
    "signup_disabled": Code(403, "550 5.7.1 Not permitted", "Set signup_enabled = true (MXD_SIGNUP_ENABLED=true) and restart, or ask the operator to create the organisation."),
    "invalid_code": Code(422, "550 5.7.1 Not permitted", "Use the 6-digit code from the latest verification email."),
    "code_expired": Code(422, "550 5.7.1 Not permitted", "Sign up again (POST /v1/auth/signup) to get a new code."),
    "too_many_attempts": Code(403, "550 5.7.1 Too many attempts", "Sign up again (POST /v1/auth/signup) to get a new code."),
    "no_default_domain": Code(422, "550 5.7.1 No default domain", "Pass domain_id, or set default_domain (MXD_DEFAULT_DOMAIN) to a domain this server serves."),
    "webhook_url_refused": Code(400, "550 5.7.1 Webhook URL refused", "Use a public https URL; loopback, private and link-local addresses are refused unless webhook_allow_private is set."),
    "invalid_notification": Code(400, "501 5.5.4 Syntax error in parameters", "Send the SNS notification of an SES receipt rule (action 'Publish to Amazon SNS topic', encoding BASE64) as it is."),
    "admin_with_mailboxes": Code(400, "501 5.5.4 Syntax error in parameters", "Drop mailboxes for an admin token, or list the scopes the limited token needs (read, search, draft, send, audit) with its mailboxes."),
    "reserved_address": Code(403, "550 5.7.1 Address reserved for the server's operator", "Choose another local part: on the operator's shared domains postmaster, abuse, admin, hostmaster, webmaster, security, noreply, mailer-daemon, bounces and the other RFC 2142 and certificate-validation names are the operator's. Use a domain of your own for them."),
    "domain_reserved": Code(409, "550 5.7.1 Domain reserved for the server", "Use a domain you control that is not this server's hostname (nor a parent or subdomain of it), nor one of the operator's domains or their subdomains."),
    "invalid_policy": Code(422, "501 5.5.4 Syntax error in parameters", "Send the policy as documented for PUT /api/mailboxes/{mailbox}/policy: \"outbound\" {allow, otherwise} and/or \"inbound\" {allow_senders, block_senders, require_authenticated, blocked_attachments, max_message_size}."),
    "recipient_not_allowed": Code(403, "550 5.7.1 Recipient not allowed by this mailbox's policy", "Send only to the addresses and domains in the mailbox's outbound policy (GET /api/mailboxes/{mailbox}/policy), or ask the operator to widen it."),
    "internal": Code(500, "451 4.3.0 Internal error, try again later", "Retry; if it persists, check the mxd log."),
}


class MxdError(Exception):
    """An error with a stable code, a message for humans and a fix."""

    def __init__(self, code: str, message: str, fix: str | None = None, status: int | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        spec = CODES.get(code, CODES["internal"])
        self.code = code
        self.message = message
        self.fix = fix or spec.fix
        self.status = status or spec.http
        self.smtp = spec.smtp
        self.retry_after = retry_after

    @property
    def hard_stop(self) -> bool:
        """True when retrying the same request cannot succeed (not a rate limit or a server fault)."""
        return self.status < 500 and self.status != 429

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message, "fix": self.fix, "hard_stop": self.hard_stop}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return {"error": body}
