"""Certificates: the one the listeners present (reloaded without a restart) and getting it by ACME."""
