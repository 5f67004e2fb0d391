"""One real daemon shared by organisations: the operator's domain example.test (shared with tenants), the
hostname mx.example.test, a DNS server on loopback the daemon asks, and organisations with their admin keys."""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.daemon import MxdProcess
from tests.support.dnsserver import DNSServer

SHARED = "example.test"
HOSTNAME = f"mx.{SHARED}"


@dataclass
class World:
    mxd: MxdProcess
    dns: DNSServer

    def call(self, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        return self.mxd.api(method, path, token=token, **kw)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return self.mxd.sql(statement, params)

    def organisation(self, org_id: str) -> str:
        """An organisation (as sign-up makes it) and its admin key, issued by the operator."""
        self.sql('INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
                 "VALUES (?, ?, ?, ?, ?, 0)", (org_id, org_id, org_id.replace("_", "-"), f"{org_id}@remote.test",
                                               time.time()))
        r = self.mxd.api("POST", "/api/tokens", json={"name": f"{org_id} owner", "scopes": ["admin"], "org_id": org_id})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def agent_mailbox(self, key: str, local: str, **extra: Any) -> httpx.Response:
        """POST /v1/agents/{id}/mailboxes for a new agent of the key's organisation."""
        tag = secrets.token_hex(4)
        r = self.call("POST", "/v1/agents", key, json={"name": f"{local} {tag}", "external_id": f"sec:{local}:{tag}"})
        assert r.status_code == 201, r.text
        return self.call("POST", f"/v1/agents/{r.json()['id']}/mailboxes", key,
                         json=dict({"local_part": local}, **extra))

    def legacy_token(self, scopes: list[str], mailboxes: list[str] | None, org_id: str | None = None) -> str:
        """A token row written as an older mxd could have (no check at creation); returns its secret."""
        secret = "mxd_" + secrets.token_urlsafe(32)
        self.sql('INSERT INTO "token" ("id", "name", "secret_hash", "hint", "scopes", "mailboxes", "org_id", '
                 '"created_at") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                 (f"tok_legacy{secrets.token_hex(6)}", "legacy", hashlib.sha256(secret.encode()).hexdigest(),
                  secret[:10], json.dumps(scopes), None if mailboxes is None else json.dumps(mailboxes), org_id,
                  time.time()))
        return secret

    def stop(self) -> None:
        self.mxd.stop()
        self.dns.stop()


def start(data_dir: Path, env: dict[str, str] | None = None) -> World:
    dns = DNSServer({})
    dns.start()
    proc = MxdProcess(data_dir, domains=[SHARED], hostname=HOSTNAME,
                      env=dict({"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                                "MXD_WEBHOOK_ALLOW_PRIVATE": "true"}, **(env or {})))
    proc.init()
    proc.start()
    return World(proc, dns)
