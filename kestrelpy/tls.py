"""Server-side TLS for the memcache and HTTP listeners, from PEM files (SECURITY.md).

The only module that touches pyOpenSSL and ``cryptography`` (Twisted's ``tls`` extra), and
only inside its functions: a server without TLS never imports them, and one whose
environment lacks them gets a config error rather than an ImportError at startup.

A listener with TLS is a plain TCP listener whose factory is wrapped in Twisted's
``TLSMemoryBIOFactory`` (what ``reactor.listenSSL`` does), so the connection code is the
same with and without TLS and the plain-text path has no per-request check. One detail
needs care: Twisted's protocol wrapper forwards unknown attributes to the TCP transport
under it, so ``transport.socket`` would be the raw socket, and
:func:`kestrelpy.reactor.write_promptly` would send replies past the encryption.
`_TlsConnection` answers ``socket = None`` so replies take ``transport.write``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kestrelpy.errors import KestrelpyError

__all__ = ["ServerTls", "TlsFileError", "load_server_tls", "wrap_factory"]

_INSTALL_HINT = "TLS needs pyOpenSSL: pip install 'kestrelpy[tls]' (Twisted's tls extra)"


class TlsFileError(KestrelpyError):
    """A certificate or key file cannot be used; ``which`` says which of the two to blame."""

    def __init__(self, which: Literal["cert", "key"], why: str) -> None:
        super().__init__(why)
        self.which = which


@dataclass(frozen=True)
class ServerTls:
    """Checked TLS settings for the listeners: Twisted's ``CertificateOptions``.

    Built once at startup; every TLS connection of both listeners shares its context.
    """

    options: Any  # twisted.internet.ssl.CertificateOptions (untyped library)
    subject: str  # the certificate's subject, for the "listening" log line


def load_server_tls(cert_path: Path, key_path: Path) -> ServerTls:
    """Read and check a PEM certificate chain and its unencrypted PEM private key.

    ``cert_path`` holds the server certificate first, then any intermediates;
    ``key_path`` may be the same file. The key must match the certificate and the context
    must build, so every problem shows at startup. TLS 1.2 is the minimum version.
    Raises `TlsFileError`.
    """
    try:
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from OpenSSL import SSL, crypto
        from twisted.internet.ssl import CertificateOptions, TLSVersion
    except ImportError as err:
        raise TlsFileError("cert", _INSTALL_HINT) from err

    cert_pem = _read(cert_path, "cert", "certificate")
    key_pem = cert_pem if key_path == cert_path else _read(key_path, "key", "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as err:
        raise TlsFileError("cert", f"{cert_path}: no PEM certificate could be read") from err
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as err:  # cryptography: "Password was not given but ... is encrypted"
        why = f"{key_path}: the private key is encrypted; give an unencrypted PEM key"
        raise TlsFileError("key", why) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise TlsFileError("key", f"{key_path}: no PEM private key could be read") from err
    leaf, *intermediates = chain
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        why = f"{key_path}: the private key does not match the certificate in {cert_path}"
        raise TlsFileError("key", why)
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(cert) for cert in intermediates],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    try:
        with warnings.catch_warnings():
            # Twisted's options take pyOpenSSL objects, which pyOpenSSL now deprecates in
            # favour of cryptography's; the context is built (and cached) once, here.
            warnings.simplefilter("ignore", DeprecationWarning)
            options.getContext()  # any refusal by OpenSSL shows at startup
    except SSL.Error as err:
        raise TlsFileError("cert", f"{cert_path}: OpenSSL refused it: {err}") from err
    return ServerTls(options=options, subject=leaf.subject.rfc4514_string())


def _read(path: Path, which: Literal["cert", "key"], what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise TlsFileError(which, f"cannot read {what} {path}: {err.strerror or err}") from err


def wrap_factory(tls: ServerTls, factory: Any) -> Any:
    """``factory`` behind TLS, to be given to ``listenTCP`` (as ``listenSSL`` would do)."""
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    class _TlsConnection(TLSMemoryBIOProtocol):
        socket = None  # see the module docstring: replies must go through the TLS layer

    wrapped = TLSMemoryBIOFactory(tls.options, False, factory)
    wrapped.protocol = _TlsConnection
    wrapped.noisy = False  # no "Starting factory" lines: the service logs its own
    return wrapped
