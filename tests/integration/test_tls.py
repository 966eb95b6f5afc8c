"""TLS on the memcache and HTTP listeners (SECURITY.md), with real TLS clients.

A self-signed certificate for 127.0.0.1 is made per test with ``cryptography`` (Twisted's
``tls`` extra); clients verify it (Python's ``ssl`` for memcache, ``urllib`` for HTTPS). A
plain-text client on a TLS port must be dropped without a plain-text reply and without
disturbing the TLS clients. Bad TLS settings are one config error naming file:line and key.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kestrelpy.config import load_config
from kestrelpy.errors import ConfigError

from .conftest import (
    HOST,
    IO_TIMEOUT_S,
    ServerFactory,
    ServerProcess,
    assert_one_line_user_error,
    run_kestrelpy,
)


@dataclass(frozen=True)
class Certs:
    cert: Path  # self-signed, for IP 127.0.0.1 and localhost
    key: Path
    other_key: Path  # a valid key that does not match ``cert``
    encrypted_key: Path  # ``key``, encrypted with a password


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """PEM files under ``tmp_path/certs`` (the test configs name them relatively)."""
    folder = tmp_path / "certs"
    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kestrelpy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certs = Certs(
        cert=folder / "cert.pem",
        key=folder / "key.pem",
        other_key=folder / "other-key.pem",
        encrypted_key=folder / "encrypted-key.pem",
    )
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(_key_pem(key))
    certs.other_key.write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    certs.encrypted_key.write_bytes(_key_pem(key, b"secret"))
    return certs


def client_context(certs: Certs) -> ssl.SSLContext:
    """A verifying client: trusts only the test certificate, checks the name 127.0.0.1."""
    return ssl.create_default_context(cafile=str(certs.cert))


TLS_BOTH = """[server]
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
tls_memcache = true
tls_http = true
"""


class TlsConn:
    """A memcache-text client over TLS, with a deadline on every read."""

    def __init__(self, srv: ServerProcess, context: ssl.SSLContext) -> None:
        assert srv.port is not None
        raw = socket.create_connection((HOST, srv.port), timeout=IO_TIMEOUT_S)
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        self.buf = bytearray()

    def __enter__(self) -> TlsConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, data: bytes, reply_ends_with: bytes) -> bytes:
        """Send ``data``; read until the buffer ends with ``reply_ends_with``; return all."""
        self.sock.sendall(data)
        deadline = time.monotonic() + IO_TIMEOUT_S
        while not self.buf.endswith(reply_ends_with):
            assert time.monotonic() < deadline, f"timed out; got {bytes(self.buf[-200:])!r}"
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"closed; got {bytes(self.buf[-200:])!r}"
            self.buf += chunk
        reply, self.buf = bytes(self.buf), bytearray()
        return reply

    def read_exact(self, size: int) -> bytes:
        deadline = time.monotonic() + IO_TIMEOUT_S
        while len(self.buf) < size:
            assert time.monotonic() < deadline, f"timed out after {len(self.buf)} bytes"
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"closed after {len(self.buf)} bytes"
            self.buf += chunk
        reply, self.buf = bytes(self.buf[:size]), self.buf[size:]
        return reply


def https_get(srv: ServerProcess, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    url = srv.http_url().replace("http://", "https://", 1) + path
    with urllib.request.urlopen(url, timeout=IO_TIMEOUT_S, context=context) as reply:
        return reply.status, reply.read()


# ------------------------------------------------------------------------ memcache


def test_memcache_over_tls_set_get_with_a_verifying_client(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(TLS_BOTH)
    assert "listening on 127.0.0.1:" in srv.log() and ", tls)" in srv.log()
    with TlsConn(srv, client_context(certs)) as conn:
        assert conn.request(b"set jobs 0 0 5\r\nhello\r\n", b"\r\n") == b"STORED\r\n"
        assert conn.request(b"get jobs\r\n", b"END\r\n") == b"VALUE jobs 0 5\r\nhello\r\nEND\r\n"


def test_pipelined_large_replies_all_go_through_tls(
    server_factory: ServerFactory, certs: Certs
) -> None:
    """Replies big enough to fill the socket buffer, in one pipelined batch: every byte
    must come back encrypted and in order (none may bypass the TLS layer)."""
    srv = server_factory(TLS_BOTH)
    body = bytes(range(256)) * 4096  # 1 MiB
    count = 8
    with TlsConn(srv, client_context(certs)) as conn:
        sets = b"".join(b"set big 0 0 %d\r\n%s\r\n" % (len(body), body) for _ in range(count))
        assert conn.request(sets, b"STORED\r\n" * count) == b"STORED\r\n" * count
        conn.sock.sendall(b"get big\r\n" * count)
        value = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        assert conn.read_exact(len(value) * count) == value * count
        assert conn.request(b"get big\r\n", b"END\r\n") == b"END\r\n"


def test_plain_text_client_on_the_tls_port_is_dropped_and_harms_nobody(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(TLS_BOTH)
    context = client_context(certs)
    with TlsConn(srv, context) as before:
        assert before.request(b"set q 0 0 1\r\na\r\n", b"\r\n") == b"STORED\r\n"
        assert srv.port is not None
        with socket.create_connection((HOST, srv.port), timeout=IO_TIMEOUT_S) as plain:
            plain.sendall(b"set q 0 0 1\r\nb\r\nget q\r\n")
            received = b""
            try:
                while chunk := plain.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
            # Dropped: no memcache reply in clear (at most a TLS alert record).
            assert b"STORED" not in received and b"VALUE" not in received, received
        # The connection open before, and a new one, both still work; the plain set is lost.
        assert before.request(b"get q\r\n", b"END\r\n") == b"VALUE q 0 1\r\na\r\nEND\r\n"
        with TlsConn(srv, context) as after:
            assert after.request(b"get q\r\n", b"END\r\n") == b"END\r\n"
    assert srv.running


def test_a_client_that_does_not_trust_the_certificate_is_refused(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(TLS_BOTH)
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsConn(srv, ssl.create_default_context())  # system CAs only
    with TlsConn(srv, client_context(certs)) as conn:
        assert conn.request(b"version\r\n", b"\r\n").startswith(b"VERSION ")


# ------------------------------------------------------------------------ HTTP


def test_https_listener_answers_a_verifying_client(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(TLS_BOTH, http=True)
    assert https_get(srv, "/ping", client_context(certs)) == (200, b"pong")
    assert "(https)" in srv.log()
    assert https_get(srv, "/ping", client_context(certs)) == (200, b"pong")
    status, body = https_get(srv, "/healthz", client_context(certs))
    assert (status, json.loads(body)) == (200, {"alive": True})


def test_plain_http_on_the_https_port_fails_and_https_keeps_working(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(TLS_BOTH, http=True)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(srv.http_url() + "/ping", timeout=IO_TIMEOUT_S)
    assert https_get(srv, "/ping", client_context(certs)) == (200, b"pong")


def test_tls_on_one_listener_leaves_the_other_plain(
    server_factory: ServerFactory, certs: Certs
) -> None:
    srv = server_factory(
        '[server]\ntls_cert = "certs/cert.pem"\ntls_key = "certs/key.pem"\ntls_http = true\n',
        http=True,
    )
    with srv.connect() as conn:  # plain memcache
        assert conn.set("plain", b"x") == b"STORED\r\n"
    assert https_get(srv, "/ping", client_context(certs)) == (200, b"pong")


def test_certificate_and_key_in_one_file(server_factory: ServerFactory, certs: Certs) -> None:
    combined = certs.cert.with_name("combined.pem")
    combined.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    srv = server_factory('[server]\ntls_cert = "certs/combined.pem"\ntls_memcache = true\n')
    with TlsConn(srv, client_context(certs)) as conn:
        assert conn.request(b"set j 0 0 1\r\nz\r\n", b"\r\n") == b"STORED\r\n"


# ------------------------------------------------------------------------ config errors


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.conf"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('tls_cert = "certs/absent.pem"\ntls_memcache = true\n', "tls_cert", "cannot read"),
        ('tls_cert = "certs/key.pem"\ntls_key = "certs/key.pem"\ntls_http = true\n', "tls_cert",
         "no PEM certificate"),
        ('tls_cert = "certs/cert.pem"\ntls_key = "certs/cert.pem"\ntls_http = true\n', "tls_key",
         "no PEM private key"),
        ('tls_cert = "certs/cert.pem"\ntls_key = "certs/other-key.pem"\ntls_memcache = true\n',
         "tls_key", "does not match"),
        ('tls_cert = "certs/cert.pem"\ntls_key = "certs/encrypted-key.pem"\ntls_http = true\n',
         "tls_key", "encrypted"),
        ('tls_cert = "certs/cert.pem"\ntls_key = "certs/none.pem"\ntls_http = true\n',
         "tls_key", "cannot read"),
        ("tls_memcache = true\n", "tls_memcache", "needs tls_cert"),
        ("tls_http = true\n", "tls_http", "needs tls_cert"),
        ('tls_key = "certs/key.pem"\n', "tls_key", "needs tls_cert"),
        ('tls_cert = "certs/cert.pem"\n', "tls_cert", "unused"),
        ("tls_memcache = 1\n", "tls_memcache", "true or false"),
    ],
)  # fmt: skip
def test_bad_tls_settings_are_one_line_naming_file_line_and_key(
    tmp_path: Path, certs: Certs, text: str, key: str, why: str
) -> None:
    path = _config(tmp_path, "[server]\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    line = next(n for n, row in enumerate(text.splitlines(), start=2) if row.startswith(key))
    assert message.startswith(f"{path}:{line}: [server] {key}: "), message
    assert why in message and "\n" not in message, message


def test_unreadable_certificate_stops_serve_with_exit_2(tmp_path: Path, certs: Certs) -> None:
    certs.key.chmod(0)
    try:
        if certs.key.read_bytes():  # root reads anything: fall back to a missing file
            certs.key.unlink()
    except PermissionError:
        pass
    path = _config(tmp_path, TLS_BOTH)
    result = run_kestrelpy(
        "serve", "--config", path, "--data-dir", tmp_path / "data", "--port", "0", "--http", ""
    )
    assert_one_line_user_error(result, f"{path}:3:", "tls_key", str(certs.key))


def test_relative_tls_paths_resolve_against_the_config_file(
    tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(certs.cert.parent)  # elsewhere: "certs/..." would not resolve
    server = load_config(_config(tmp_path, TLS_BOTH)).server
    assert (server.tls_cert, server.tls_key) == (certs.cert, certs.key)
    assert (server.tls_memcache, server.tls_http) == (True, True)


def test_tls_is_off_by_default() -> None:
    server = load_config(None).server
    assert (server.tls_cert, server.tls_key, server.tls_memcache, server.tls_http) == (
        None,
        None,
        False,
        False,
    )
