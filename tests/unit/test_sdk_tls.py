"""The SDK verifies an HTTPS server's certificate, and loads no CA bundle for a plain-HTTP one."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import ConnectionConfig, Sandbox, ServerUnavailable
from corral.sdk import _http


class _Listing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"sandboxes": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def self_signed(tmp_path: Path) -> Path:
    """A certificate for ``localhost`` that no CA signed; its key beside it."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return tmp_path


@pytest.fixture
def https_server(self_signed: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listing)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(self_signed / "cert.pem", self_signed / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_server_with_an_unknown_certificate_is_refused(https_server: str) -> None:
    with pytest.raises(ServerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        Sandbox.list(url=https_server)


def _verifies(context: ssl.SSLContext | bool) -> bool:
    return isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_a_plain_http_server_needs_no_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:  # what urllib reads proxies from
        monkeypatch.delenv(name)
    assert _http._tls(ConnectionConfig("http://127.0.0.1:7423")) is False
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")  # names no proxy
    assert _http._tls(ConnectionConfig("http://127.0.0.1:7423")) is False
    assert _verifies(_http._tls(ConnectionConfig("HTTPS://corral.example.com")))
    # A proxy may be reached over TLS: its certificate is verified.
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example.com:3128")
    assert _verifies(_http._tls(ConnectionConfig("http://corral.example.com:7423")))
