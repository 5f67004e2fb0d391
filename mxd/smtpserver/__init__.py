"""SMTP listeners: the inbound MX (and later submission)."""
