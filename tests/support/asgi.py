"""The HTTP API in process: mxd.api.app.create_app over a real store, driven by Starlette's TestClient.

For API tests that only talk HTTP (no SMTP, queue, pipeline or delivery workers). `InProcessApi` offers the
request helpers of `tests.support.daemon.MxdProcess` (`api`, `token`, `messages`), so a test written against
a daemon runs unchanged against it. The app context is built in `make_context` alone."""
from __future__ import annotations

import concurrent.futures
import contextlib
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from mxd import config as config_mod
from mxd import keys
from mxd.api.app import create_app
from mxd.config import Config
from mxd.db import Database
from mxd.resolver import StaticResolver
from mxd.service import Services
from mxd.store import directory as directory_mod
from mxd.store import tokens
from mxd.store.directory import Directory
from tests.support.apicalls import ApiCalls
from tests.support.store import started_store

BASE_URL = "http://127.0.0.1"


def api_config(data_dir: Path, env: dict[str, str] | None = None) -> Config:
    """The configuration tests.support.daemon.MxdProcess gives its daemon, for a store in `data_dir`."""
    values = {"MXD_DATA_DIR": str(data_dir), "MXD_HOSTNAME": "mx.example.test", "MXD_DNS_NAMESERVERS": "127.0.0.1:1",
              "MXD_DNS_TIMEOUT": "0.5", "MXD_LOG_LEVEL": "WARNING", "MXD_OUTBOUND_ALLOW_PRIVATE": "true"}
    values.update(env or {})
    return config_mod.load(None, values)


def make_context(cfg: Config, db: Database, workers: concurrent.futures.Executor) -> Services:
    """The API's context as mxd.daemon builds it, with a static resolver and nothing queued to wake."""
    directory = Directory()
    with db.db.connection_context():
        directory.refresh()
    return Services(cfg, db, directory, workers, lambda: None, StaticResolver())


class InProcessApi(ApiCalls):
    """A store, the API app over it and a TestClient: what `mxd init` and `mxd serve` would give, minus
    the SMTP servers and the workers."""

    def __init__(self, cfg: Config, db: Database, client: TestClient, admin_token: str) -> None:
        self.cfg, self.db, self.client, self.admin_token = cfg, db, client, admin_token
        self.data_dir = cfg.data_path

    def url(self, path: str) -> str:
        return f"{BASE_URL}{path}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET without a token."""
        kwargs.pop("timeout", None)
        return self.client.get(path, **kwargs)

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"Bearer {token or self.admin_token}"
        kwargs.pop("timeout", None)
        return self.client.request(method, path, headers=headers, **kwargs)


@contextlib.contextmanager
def in_process_api(data_dir: Path, domains: list[str] = ("example.test",),
                   env: dict[str, str] | None = None) -> Iterator[InProcessApi]:
    """The API in process on a new store in `data_dir`, with `domains` (and their DKIM keys) and an admin
    token, as `mxd init --domain ...` leaves it."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg = api_config(data_dir, env)
    with started_store(cfg.effective_store_url) as db, \
            concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mxd-test-worker") as workers:
        for name in domains:
            domain, _ = db.write_sync(directory_mod.create_domain, name)
            keys.generate_dkim_keys(cfg.dkim_dir, domain.name)
        admin = db.write_sync(tokens.ensure_admin)
        with TestClient(create_app(make_context(cfg, db, workers)), base_url=BASE_URL) as client:
            yield InProcessApi(cfg, db, client, admin)


@pytest.fixture
def api_app(tmp_path: Path) -> Iterator[InProcessApi]:
    """The API in process over a fresh store serving example.test (no daemon, no SMTP)."""
    with in_process_api(tmp_path / "data") as app:
        yield app
