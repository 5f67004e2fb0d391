"""The `mxd` commands that act on a running daemon through its HTTP API (MXD_URL, MXD_TOKEN).

Each module registers the subcommands of what it owns; every handler takes the parsed
arguments and a `mxd.client.Client` and returns the exit status."""
from __future__ import annotations

import argparse

from mxd.cli import directory, mail, ops, quarantine, reports, tls_reports


def register(sub: argparse._SubParsersAction) -> None:
    for module in (directory, mail, ops, quarantine, reports, tls_reports):
        module.register(sub)
