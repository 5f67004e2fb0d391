"""Helpers the tests and bench/ share: a real daemon, SMTP clients, a sink, a DNS server, PostgreSQL,
the corpora, Postfix and Exim peers, and in-process store and ASGI fixtures."""
