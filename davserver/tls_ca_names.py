"""The names of the accepted client-certificate CAs in the server's CertificateRequest.

A server that asks for a client certificate may name the CAs it accepts: the
``certificate_authorities`` list of the TLS 1.2 CertificateRequest (RFC 5246 §7.4.4) and
the ``certificate_authorities`` extension of the TLS 1.3 one (RFC 8446 §4.2.4). With no
names, a client holding several certificates (a corporate one, a smart card) cannot tell
which one this server accepts: Java's key manager then takes the first identity of its
key store, Windows and Android pickers list every certificate. Apache
(``SSLCACertificateFile``) and nginx (``ssl_client_certificate``) send the names.

Python's ``ssl`` module cannot set the list (``load_verify_locations`` fills the trust
store only). OpenSSL's ``SSL_CTX_set_client_CA_list`` can, and it is called here through
``ctypes`` on the very ``SSL_CTX`` of the server's ``ssl.SSLContext``, in the libssl that
Python's ``_ssl`` module is linked against: ``ctypes.CDLL(_ssl.__file__)`` returns the
handle of the loaded module, and ``dlsym`` on it searches the module's own dependencies.
Moving the TLS stack to pyOpenSSL (``Context.set_client_ca_list``) for this one call
would put the connections on a second OpenSSL, the one bundled in ``cryptography``'s
wheel (4.0 here, beside the system's 3.0 that ``ssl`` uses), and rewrite the
non-blocking handshake loop, the socket readers and writers, session resumption,
post-handshake authentication and every close path, all written against
``ssl.SSLSocket`` (cheroot's pyOpenSSL adapter covers none of those).

Where the pointer comes from: CPython 3.11 ``Modules/_ssl.c:276-296`` (checked in the
3.11.2 source; ``SSL_CTX *ctx`` at line 278) defines ``PySSLContext`` as
``PyObject_HEAD; SSL_CTX *ctx; ...``: the ``SSL_CTX *`` is the word right after the
object header (``object.__basicsize__`` bytes into the object, which also covers builds
with a larger header). Before anything is written it is checked against the Python
object, so a later layout change cannot make it write through a wrong pointer:

1. the library is the one ``_ssl`` uses: ``OpenSSL_version(OPENSSL_VERSION)`` equals
   ``ssl.OPENSSL_VERSION``;
2. ``SSL_CTX_get_options`` equals ``SSLContext.options`` and ``SSL_CTX_get_verify_mode``
   (masked as ``_ssl.c`` ``get_verify_mode`` does) equals ``SSLContext.verify_mode``;
3. a sentinel: ``SSLContext.num_tickets`` is set to a value it never has here, read
   back through ``SSL_CTX_get_num_tickets``, and restored (and read back again).

If any check fails (another Python build, a statically linked ``_ssl``, a layout
change), nothing is written: a warning is logged and the server runs without CA names,
as before. ``SSL_CTX_get_client_CA_list`` is read back after the write.

**A bound on the list** (:data:`MAX_NAMES_BYTES`): every name travels in every
handshake, about 160 bytes per CA, and Java's TLS stack refuses a handshake message
over 32,768 bytes (SunJSSE ``jdk.tls.maxHandshakeMessageSize``, default 32768,
``sun/security/ssl/SSLConfiguration.java``): a bundle of 215 CAs made a 34,528-byte
CertificateRequest that every Java client (Cyberduck, Sardine, Android) failed with
``SSLProtocolException``, where without names it had signed in. A list longer than the
bound is therefore not sent at all (a cut list would leave the clients of the CAs cut
off without a certificate to choose): the server warns and runs without CA names.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
from pathlib import Path

from cryptography import x509

__all__ = ["MAX_NAMES_BYTES", "CANamesUnavailable", "encoded_names_size", "send_client_ca_names"]

log = logging.getLogger("davserver.tls")

#: SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT: the bits ``ssl.SSLContext.verify_mode``
#: maps (``_ssl.c`` ``get_verify_mode``).
_VERIFY_MASK = 0x03
_VERIFY_MODES = {ssl.CERT_NONE: 0x00, ssl.CERT_OPTIONAL: 0x01, ssl.CERT_REQUIRED: 0x03}
#: ``OpenSSL_version`` type for the full version text (opensslv.h).
_OPENSSL_VERSION = 0
#: A number of session tickets the server never sends, for the sentinel check.
_SENTINEL_TICKETS = 13
#: Largest encoded ``certificate_authorities`` list sent (bytes, 2-byte length prefixes
#: included): Java's 32,768-byte handshake-message limit less 512 for the rest of the
#: CertificateRequest (measured: 49 bytes with TLS 1.3, 50 with TLS 1.2 on OpenSSL 3.0 --
#: its context and signature algorithms; a list of 32,068 bytes made a 32,117-byte message).
MAX_NAMES_BYTES = 32 * 1024 - 512


class CANamesUnavailable(RuntimeError):
    """The CA names could not be set: ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _library() -> ctypes.CDLL:
    """libssl as ``_ssl`` sees it, with the prototypes used here.
    Raises ``CANamesUnavailable`` when a symbol is missing."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_num_tickets.restype = ctypes.c_size_t
        lib.SSL_CTX_get_num_tickets.argtypes = [ctypes.c_void_p]
        lib.SSL_load_client_CA_file.restype = ctypes.c_void_p
        lib.SSL_load_client_CA_file.argtypes = [ctypes.c_char_p]
        lib.SSL_CTX_set_client_CA_list.restype = None
        lib.SSL_CTX_set_client_CA_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.SSL_CTX_get_client_CA_list.restype = ctypes.c_void_p
        lib.SSL_CTX_get_client_CA_list.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_num.restype = ctypes.c_int
        lib.OPENSSL_sk_num.argtypes = [ctypes.c_void_p]
        lib.ERR_clear_error.restype = None
        lib.ERR_clear_error.argtypes = []
        # long SSL_CTX_ctrl(SSL_CTX *, int cmd, long larg, void *parg) (ssl.h): tls_tickets.py
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    except (OSError, AttributeError) as exc:
        raise CANamesUnavailable(f"libssl functions not reachable through _ssl ({exc})") from None
    return lib


def _ssl_ctx_pointer(context: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The ``SSL_CTX *`` of `context`, after the checks of the module docstring: the one
    place the server reaches an ``SSL_CTX`` (tls_tickets.py uses it too).
    Raises ``CANamesUnavailable`` naming the check that failed."""
    if not isinstance(context, ssl.SSLContext):
        raise CANamesUnavailable("not an ssl.SSLContext")
    offset = object.__basicsize__
    if type(context).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        raise CANamesUnavailable("ssl.SSLContext is smaller than PyObject_HEAD + SSL_CTX *")
    version = (lib.OpenSSL_version(_OPENSSL_VERSION) or b"").decode("ascii", "replace")
    if version != ssl.OPENSSL_VERSION:
        raise CANamesUnavailable(f"libssl reached is {version!r}, _ssl uses {ssl.OPENSSL_VERSION!r}")
    ptr = ctypes.c_void_p.from_address(id(context) + offset).value
    if not ptr:
        raise CANamesUnavailable("no SSL_CTX pointer after the object header")
    if lib.SSL_CTX_get_options(ptr) != context.options & 0xFFFF_FFFF_FFFF_FFFF:
        raise CANamesUnavailable("SSL_CTX_get_options differs from SSLContext.options")
    if lib.SSL_CTX_get_verify_mode(ptr) & _VERIFY_MASK != _VERIFY_MODES[context.verify_mode]:
        raise CANamesUnavailable("SSL_CTX_get_verify_mode differs from SSLContext.verify_mode")
    tickets = context.num_tickets
    try:
        context.num_tickets = _SENTINEL_TICKETS
        seen = lib.SSL_CTX_get_num_tickets(ptr)
    finally:
        context.num_tickets = tickets
    if seen != _SENTINEL_TICKETS or lib.SSL_CTX_get_num_tickets(ptr) != tickets:
        raise CANamesUnavailable("the num_tickets sentinel did not reach SSL_CTX_get_num_tickets")
    return int(ptr)


def _subjects(ca_file: Path) -> list[str]:
    try:
        certs = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError):
        return []
    return [cert.subject.rfc4514_string() for cert in certs]


def encoded_names_size(ca_file: Path) -> int:
    """Bytes the subjects of `ca_file` (PEM) take as a TLS ``certificate_authorities`` list
    (RFC 8446 §4.2.4, RFC 5246 §7.4.4): a 2-byte list length, then each distinct DER
    subject behind its own 2-byte length. 0 for a file without certificates."""
    try:
        certs = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError):
        return 0
    subjects = dict.fromkeys(cert.subject.public_bytes() for cert in certs)
    return 2 + sum(2 + len(der) for der in subjects) if subjects else 0


def send_client_ca_names(context: ssl.SSLContext, ca_file: Path, *, max_bytes: int = MAX_NAMES_BYTES) -> list[str]:
    """Make `context` (a server ``ssl.SSLContext``) name the subject of every certificate
    in `ca_file` (PEM, the ``tls.client_ca`` bundle) in its CertificateRequest, for TLS
    1.2 and 1.3 alike; return those subjects (RFC 4514 strings, in file order, duplicates
    as OpenSSL drops them). Call it before the context serves a connection.

    Raises :class:`CANamesUnavailable` when the names would take more than `max_bytes`
    (:func:`encoded_names_size`; see :data:`MAX_NAMES_BYTES`), when the ``SSL_CTX`` cannot
    be reached safely (the checks of the module docstring) or OpenSSL reads no name from
    `ca_file`; `context` is then unchanged.
    """
    size = encoded_names_size(ca_file)
    if size > max_bytes:
        raise CANamesUnavailable(
            f"the CA names of {ca_file} take {size} bytes, more than {max_bytes}: Java clients refuse a "
            "certificate request over 32768 bytes, so none are sent; list fewer CAs to have them named"
        )
    lib = _library()
    ptr = _ssl_ctx_pointer(context, lib)
    names = lib.SSL_load_client_CA_file(str(ca_file).encode())
    if not names:
        lib.ERR_clear_error()  # leave no stale error for the next ssl call to report
        raise CANamesUnavailable(f"OpenSSL read no CA name from {ca_file}")
    count = lib.OPENSSL_sk_num(names)
    lib.SSL_CTX_set_client_CA_list(ptr, names)  # takes ownership of `names`
    if lib.OPENSSL_sk_num(lib.SSL_CTX_get_client_CA_list(ptr)) != count:
        raise CANamesUnavailable("SSL_CTX_get_client_CA_list does not hold the names just set")
    return list(dict.fromkeys(_subjects(ca_file)))
