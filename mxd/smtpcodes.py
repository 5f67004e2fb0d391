"""SMTP reply lines with enhanced status codes (RFC 5321, RFC 3463), named once."""
from __future__ import annotations

SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 OK queued as {}"
UNKNOWN_USER = "550 5.1.1 No such user here"
RELAY_DENIED = "550 5.7.1 Relaying denied"
BAD_ADDRESS = "553 5.1.3 Bad recipient address syntax"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"        # RFC 5321 4.5.3.1.8
BAD_LINE_ENDINGS = "550 5.6.0 Bare CR, bare LF or NUL in message data refused"
TEMP_FAILURE = "451 4.3.0 Temporary failure, try again later"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
