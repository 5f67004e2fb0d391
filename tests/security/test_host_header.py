"""Threat: the Host header of one request written into scripts and skill files that agents run.

/install.sh, /llms.txt and the skills inside install.sh are generated with this server's URL. Built from
the request's Host header, `Host: evil.example$(id)` put a command substitution into every `curl` line of
the installed skills, and `Host: MXD_SKILL_END` (the here-document's end marker) broke the script with a
500. The URL is now the configured `public_url`, else the Host header only when it is a plain
host[:port], else the configured hostname; the marker is chosen so that no skill contains it. The
OpenAPI document's server URL follows the same rule.
"""
from __future__ import annotations

import socket
import subprocess

import pytest

from tests.support.daemon import MxdProcess

HOSTILE = ["evil.example$(id)", "MXD_SKILL_END", "evil'example", "evil`id`.example", "evil.example host",
           "evil.example/$(id)", "e\u0301vil.example"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("host-header") / "data")
    proc.init()
    proc.start()
    yield proc
    proc.stop()


def _get(proc: MxdProcess, path: str, host: str) -> tuple[int, str]:
    """GET with this exact Host header, over a raw socket (HTTP clients refuse to send some of these)."""
    with socket.create_connection(("127.0.0.1", proc.http_port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if not n:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, body.decode("utf-8")


@pytest.mark.parametrize("host", HOSTILE)
def test_a_hostile_host_header_never_reaches_the_documents(server, host, tmp_path):
    fallback = f"http://mx.example.test:{server.http_port}"
    for path in ("/install.sh", "/llms.txt", "/openapi.json"):
        status, body = _get(server, path, host)
        if status == 400:               # refused before mxd sees it (the HTTP parser): nothing echoed either
            continue
        assert status == 200, (path, body[:300])
        assert f"//{host}" not in body and "$(id)" not in body and "evil" not in body, path
        assert fallback in body, path
    status, script = _get(server, "/install.sh", host)
    if status == 400:
        return
    target = tmp_path / "skills"
    done = subprocess.run(["sh", "-s", "--", "--target", str(target)], input=script, capture_output=True, text=True,
                          timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    files = sorted(target.glob("*/SKILL.md"))
    assert len(files) == 3
    for f in files:
        text = f.read_text()
        assert fallback in text and "$(id)" not in text and "evil" not in text


def test_a_plain_host_header_is_used(server):
    status, body = _get(server, "/llms.txt", "mail.example.org:8443")
    assert status == 200 and "curl -fsSL http://mail.example.org:8443/install.sh" in body


def test_public_url_wins_over_any_host(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("host-public") / "data",
                      env={"MXD_PUBLIC_URL": "https://mail.example.com/"})
    proc.init()
    proc.start()
    try:
        for host in ("mail.example.org", "evil.example$(id)"):
            status, body = _get(proc, "/install.sh", host)
            assert status == 200 and "BASE_URL='https://mail.example.com'" in body and "example.org" not in body
            status, body = _get(proc, "/llms.txt", host)
            assert status == 200 and "# mxd mail server at https://mail.example.com\n" in body
    finally:
        proc.stop()
