"""Messages the tests send: a remote MTA's delivery status notification, DKIM signatures of a remote domain."""
from __future__ import annotations

from pathlib import Path

import dkim

from mxd import keys


def dsn(return_path: str, recipient: str, action: str = "failed", status: str = "5.1.1",
        mta: str = "mx.example.com") -> bytes:
    """A bounce from `mta` to `return_path` (RFC 3464 multipart/report) saying `recipient` is gone."""
    return (
        f"From: MAILER-DAEMON@{mta}\r\n"
        f"To: {return_path}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n'
        "\r\n"
        "--b0\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        f"The mailbox of {recipient} is gone.\r\n"
        "--b0\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        f"Reporting-MTA: dns; {mta}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} mailbox gone\r\n"
        "\r\n"
        "--b0--\r\n"
    ).encode()


def dkim_sign(message: bytes, signing: list[keys.DkimKey], domain: bytes = b"remote.test") -> bytes:
    """`message` with a DKIM-Signature by each of `signing` (keys of `domain`), the last one on top."""
    for k in signing:
        algo = b"ed25519-sha256" if k.algorithm == keys.ED25519 else b"rsa-sha256"
        message = dkim.sign(message, k.selector.encode(), domain, keys.dkim_private_for_dkimpy(k),
                            signature_algorithm=algo, include_headers=[b"from", b"to", b"subject", b"date"]) + message
    return message


def published_keys(dkim_dir: Path, zone: dict, domain: str = "remote.test") -> list[keys.DkimKey]:
    """New DKIM keys of `domain`, their public halves added to `zone` (tests.support.dnsserver's form)."""
    signing = keys.generate_dkim_keys(dkim_dir, domain)
    for k in signing:
        zone[k.dns_name] = {"TXT": [k.public_dns_value]}
    return signing
