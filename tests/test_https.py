"""The HTTPS listener (https_listen): the same API as the HTTP one over TLS with the server certificate, verified
by a client that trusts its CA; the certificate swapped on SIGHUP for new connections while open ones keep
theirs; the read deadlines of mxd.api.httpconn; a graceful stop."""
from __future__ import annotations

import signal
import socket
import ssl

import httpx
import pytest
import trustme

from tests.support.daemon import MxdProcess, wait_for

HTTPS_PORT = 26111


def _write(cert: trustme.LeafCert, tmp, stem: str = "") -> None:
    # written to a new file, then renamed over the old one, as certbot does
    (tmp / f"key.pem{stem}").write_bytes(cert.private_key_pem.bytes())
    (tmp / f"cert.pem{stem}").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    if stem:
        (tmp / f"key.pem{stem}").rename(tmp / "key.pem")
        (tmp / f"cert.pem{stem}").rename(tmp / "cert.pem")


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("https")
    ca = trustme.CA()
    _write(ca.issue_cert("mx.example.test", "127.0.0.1"), tmp)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    proc = MxdProcess(tmp / "data", env={"MXD_TLS_CERT": str(tmp / "cert.pem"), "MXD_TLS_KEY": str(tmp / "key.pem"),
                                         "MXD_HTTPS_LISTEN": f"127.0.0.1:{HTTPS_PORT}", "MXD_TLS_WATCH_INTERVAL": "0",
                                         "MXD_HTTP_HEADER_TIMEOUT": "1"})
    proc.init()
    proc.start()
    assert wait_for(lambda: "HTTPS on https://" in (proc.data_dir / "mxd.log").read_text(), timeout=10)
    yield proc, ca, tmp
    proc.stop()


def _trusting(tmp) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp / "ca.pem"))


def _peer(response: httpx.Response) -> bytes:
    return response.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)


def test_https_serves_the_api_to_a_client_that_trusts_the_ca(https):
    proc, _, tmp = https
    base = f"https://127.0.0.1:{HTTPS_PORT}"
    with httpx.Client(verify=_trusting(tmp), timeout=10) as client:
        r = client.get(f"{base}/api/health")
        assert r.status_code == 200 and r.json()["hostname"] == "mx.example.test"
        r = client.get(f"{base}/api/domains", headers={"Authorization": f"Bearer {proc.admin_token}"})
        assert r.status_code == 200 and [d["name"] for d in r.json()["data"]] == ["example.test"]
        assert client.get(f"{base}/api/domains").status_code == 401
        # the app sees the request as HTTPS: documents name this server with https://
        assert f"{base}/" in client.get(f"{base}/llms.txt").text
        assert r.extensions["http_version"] == b"HTTP/1.1"
    assert proc.get("/api/health").status_code == 200               # the HTTP listener is still there


def test_a_client_without_the_ca_refuses_the_certificate(https):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{HTTPS_PORT}/api/health", timeout=10)


def test_plain_http_on_the_https_port_gets_no_answer(https):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{HTTPS_PORT}/api/health", timeout=5)


def test_a_silent_tls_client_is_cut_off_by_the_header_deadline(https):
    _, _, tmp = https
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=15) as raw, \
            _trusting(tmp).wrap_socket(raw, server_hostname="mx.example.test") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.recv(100) == b""                                 # closed by the server, nothing said


def test_sighup_swaps_the_certificate_for_new_connections_only(https):
    proc, ca, tmp = https
    base = f"https://127.0.0.1:{HTTPS_PORT}/api/health"
    with httpx.Client(verify=_trusting(tmp), timeout=10) as old:
        first = old.get(base)
        before = _peer(first)
        renewed = ca.issue_cert("mx.example.test", "127.0.0.1", "mta-sts.example.test")
        _write(renewed, tmp, ".new")
        proc.proc.send_signal(signal.SIGHUP)

        def fresh() -> bytes | None:
            with httpx.Client(verify=_trusting(tmp), timeout=10) as client:
                peer = _peer(client.get(base))
            return peer if peer != before else None
        after = wait_for(fresh, timeout=10)
        assert after == ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        again = old.get(base)                                       # the kept-alive connection is the old one
        assert again.status_code == 200 and _peer(again) == before


def test_https_port_taken_stops_the_start_with_a_fix(tmp_path):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", HTTPS_PORT + 2))
        taken.listen()
        proc = MxdProcess(tmp_path / "data", env={"MXD_HTTPS_LISTEN": f"127.0.0.1:{HTTPS_PORT + 2}"})
        proc.init()
        with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.1:\d+ for HTTPS: .*MXD_HTTPS_LISTEN"):
            proc.start()
        proc.stop()


def test_stop_is_graceful_and_closes_the_https_port(https):
    """Last in this module: it stops the module's daemon."""
    proc, _, tmp = https
    with httpx.Client(verify=_trusting(tmp), timeout=10) as client:
        assert client.get(f"https://127.0.0.1:{HTTPS_PORT}/api/health").status_code == 200   # a kept-alive connection
        assert proc.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=2).close()
