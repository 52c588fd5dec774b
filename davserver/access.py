"""The one access decision: may this account do this to these resources?

The guard authenticates a request (certificate, password, code: auth/core.py)
and then asks :func:`decide` once, with the request's parsed target and
Destination (target.py), for every resource the request touches: the target,
and for COPY and MOVE the destination too. Nothing later in the request asks
again; the filesystem and WsgiDAV execute on the same parsed paths. The factors
the sign-in must prove are those of every share the request touches, the
strictest union (:func:`required_factors`), computed once before authentication.

Every refusal anywhere in the server has a reason from :class:`Refusal`, the
audit log's ``reason`` vocabulary. The client hears only the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from .accounts import Account
from .config import FACTORS, ShareConfig, is_macos_clutter
from .target import Target

__all__ = ["READ_METHODS", "Refusal", "authorize", "decide", "refusal_for_status", "required_factors"]

#: Methods that only read their target. Anything else, including methods we do not
#: know, counts as a write. (COPY reads its source and writes its Destination.)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "COPY"})


class Refusal(StrEnum):
    """Why a request was refused: the ``reason`` field of the audit log."""

    # the request itself (target.py, framing)
    BAD_PATH = "bad_path"
    BAD_DESTINATION = "bad_destination"
    BAD_FRAMING = "bad_framing"
    # the TLS handshake, before any request (tls_refusals.py); no_cert, bad_eku and
    # cert_expired are said there too
    UNKNOWN_CA = "unknown_ca"
    TLS_ERROR = "tls_error"
    # the certificate and the account (auth/core.py)
    NO_CERT = "no_cert"
    BAD_EKU = "bad_eku"
    CERT_EXPIRED = "cert_expired"
    REVOKED = "revoked"
    UNKNOWN_CERT = "unknown_cert"
    DISABLED = "disabled"
    # the factors (auth/core.py); the first five count toward the sign-in lockout
    BAD_PASSWORD = "bad_password"  # noqa: S105 - a reason name
    BAD_OTP = "bad_otp"
    OTP_REPLAYED = "otp_replayed"
    USER_MISMATCH = "user_mismatch"
    BAD_AUTH_HEADER = "bad_auth_header"
    NO_CREDENTIALS = "no_credentials"
    OTP_REQUIRED = "otp_required"
    TOTP_NOT_ENROLLED = "totp_not_enrolled"
    TOTP_UNAVAILABLE = "totp_unavailable"
    LOCKED = "locked"  # a sign-in lockout is in force
    CSRF = "csrf"  # a browser's write or step-up form without its certificate-bound token, or cross-origin (csrf.py)
    RENEW_NOT_DUE = "renew_not_due"  # a renewal before enrolment.renew_before_days (stepup.py)
    RENEW_REFUSED = "renew_refused"  # a renewal the CA refused: a bad CSR, a certificate not ours (renewal.py)
    STORE_UNAVAILABLE = "store_unavailable"
    PROXY_HEADER = "proxy_header"  # a PROXY header missing, malformed or untrusted (proxy_protocol.py)
    # the resources (this module)
    SHARE_DENIED = "share_denied"
    READ_ONLY = "read_only"
    WRITE_DENIED = "write_denied"
    MACOS_CLUTTER = "macos_clutter"
    SHARE_ROOT = "share_root"
    DEST_SHARE_DENIED = "dest_share_denied"
    DEST_READ_ONLY = "dest_read_only"
    DEST_WRITE_DENIED = "dest_write_denied"
    DEST_MACOS_CLUTTER = "dest_macos_clutter"
    DEST_SHARE_ROOT = "dest_share_root"
    # later layers, which execute what was allowed and may still refuse it
    LOCK_TOKEN_OWNER = "lock_token_owner"  # noqa: S105 - another account's WebDAV lock token (store/davstate.py)
    FORBIDDEN = "forbidden"  # a 403 from WebDAV or the filesystem that no layer explained
    SHARE_MISMATCH = "share_mismatch"  # routed to another share than authorised (fs.py)
    BAD_NAME = "bad_name"  # a new name with a control character (names.py, fs.py)
    TREE_DEPTH = "tree_depth"  # deeper than limits.max_tree_depth (fs.py)
    NAME_COLLISION = "name_collision"  # differs from an existing name only by Unicode normalisation (fs.py)
    PROPFIND_DEPTH = "propfind_depth"
    BAD_MTIME = "bad_mtime"  # an X-OC-Mtime that is not whole seconds 0..9999-12-31 (oc_compat.py)
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a PUT body unlike its OC-Checksum (oc_compat.py)
    XML_TOO_LARGE = "xml_too_large"
    # bounded WebDAV state (store/davstate.py, fastpath.py): answered 507
    PROPERTY_TOO_LARGE = "property_too_large"  # one dead property's value
    TOO_MANY_PROPERTIES = "too_many_properties"  # on one resource
    PROPERTY_BYTES_EXCEEDED = "property_bytes_exceeded"  # names + values of one resource
    TOO_MANY_LOCKS = "too_many_locks"  # on one resource
    TOO_MANY_ACCOUNT_LOCKS = "too_many_account_locks"
    ANSWER_TOO_LARGE = "answer_too_large"  # a PROPFIND's estimated answer (fastpath.check_propfind)
    PROPFIND_NAMES_EXCEEDED = "propfind_names_exceeded"  # more names than properties.max_propfind_names
    LOCK_OWNER_TOO_LARGE = "lock_owner_too_large"  # a LOCK's <D:owner> over locks.max_owner_bytes
    # 408: the request did not arrive whole within its deadline (limits.header_seconds for the
    # header section, limits.body_min_bytes_per_second for the body: metering.BodyTimeout)
    REQUEST_TIMEOUT = "request_timeout"
    # what the filesystem or WebDAV said, when no layer named a reason
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    PRECONDITION_FAILED = "precondition_failed"
    TOO_LARGE = "too_large"
    RESOURCE_LOCKED = "resource_locked"  # 423: a WebDAV lock, not a sign-in lockout
    INSUFFICIENT_STORAGE = "insufficient_storage"
    BAD_GATEWAY = "bad_gateway"
    SERVER_ERROR = "server_error"
    OTHER = "other"


_BY_STATUS = {
    400: Refusal.BAD_REQUEST,
    401: Refusal.NO_CREDENTIALS,
    403: Refusal.FORBIDDEN,
    404: Refusal.NOT_FOUND,
    405: Refusal.METHOD_NOT_ALLOWED,
    408: Refusal.REQUEST_TIMEOUT,
    409: Refusal.CONFLICT,
    412: Refusal.PRECONDITION_FAILED,
    413: Refusal.TOO_LARGE,
    414: Refusal.BAD_PATH,
    415: Refusal.BAD_REQUEST,
    416: Refusal.BAD_REQUEST,
    423: Refusal.RESOURCE_LOCKED,
    502: Refusal.BAD_GATEWAY,
    503: Refusal.STORE_UNAVAILABLE,  # the DAV app's only 503: the state store (error_pages._as_dav_error)
    507: Refusal.INSUFFICIENT_STORAGE,
}


def refusal_for_status(status: int) -> Refusal:
    """The reason recorded for a 4xx/5xx answer that no layer explained."""
    if status >= 500 and status not in _BY_STATUS:
        return Refusal.SERVER_ERROR
    return _BY_STATUS.get(status, Refusal.OTHER)


def authorize(account: Account, share: ShareConfig | None, write: bool) -> Refusal | None:
    """The rule for one resource: may ``account`` read (or write) in ``share``?

    ``share`` None is the server root (and names that are no share): readable,
    never writable. Returns the refusal, or None when allowed.
    """
    if share is None:
        return Refusal.WRITE_DENIED if write else None
    if not share.may_read(account.name, account.groups):
        return Refusal.SHARE_DENIED
    if write and share.read_only:
        return Refusal.READ_ONLY
    if write and not share.may_write(account.name, account.groups):
        return Refusal.WRITE_DENIED
    return None


def required_factors(
    method: str,
    target: Target,
    destination: Target | None,
    shares: Mapping[str, ShareConfig],
    default_require: tuple[str, ...],
) -> tuple[str, ...]:
    """The factors beyond the certificate (a subset of ``config.FACTORS``, in its order:
    ``()``, ``("password",)`` or ``("password", "totp")``) a request must prove: the union
    of the ``require`` of every share it touches, so each resource is reached only with its
    own share's factors.

    A request touches its target and, for COPY and MOVE, its Destination (RFC 4918 §9.8,
    §9.9: COPY reads the source and writes the destination; MOVE deletes the source too).
    A name outside every share (``/``, a name that is no share) counts with
    ``default_require`` (it is refused by :func:`decide` anyway when written). Nothing else
    a request names is touched: LOCK and UNLOCK act on the target's locks only (an UNLOCK
    token must lock the target, WsgiDAV request_server.py do_UNLOCK; another account's
    token is refused, store/davstate.py LockOwnerFilter), a PROPFIND stays in its target's
    share (Depth 0 or 1, limits.py; ``/`` lists the shares' names, never their content, and
    a share's modification time only to a request that proved its factors, dav.py), and an
    If header's tagged lists for other resources are never evaluated
    (conditions.if_header_holds).
    OPTIONS needs no factor: its answer is fixed per share (guard.py ``_options``) and
    Windows' WebDAV redirector gives up on a 401 there."""
    if method == "OPTIONS":
        return ()
    touched = [target] + ([destination] if method in ("COPY", "MOVE") and destination is not None else [])
    needed: set[str] = set()
    for resource in touched:
        share = shares.get(resource.share) if resource.share else None
        needed.update(share.require if share is not None else default_require)
    return tuple(f for f in FACTORS if f in needed)


_DEST = {
    Refusal.SHARE_DENIED: Refusal.DEST_SHARE_DENIED,
    Refusal.READ_ONLY: Refusal.DEST_READ_ONLY,
    Refusal.WRITE_DENIED: Refusal.DEST_WRITE_DENIED,
}


def decide(
    account: Account,
    method: str,
    target: Target,
    destination: Target | None,
    shares: Mapping[str, ShareConfig],
) -> Refusal | None:
    """Every resource rule for one request, in one place.

    ``target`` and ``destination`` come from target.py (``destination`` only for
    COPY and MOVE, where it is required). Returns None when the account may do
    ``method`` on all of them, else the first refusal:

    * the target's share must exist and allow reading (a missing share is refused as one
      the account may not read), and writing unless ``method`` only reads;
    * a share root (``/files/``) cannot be deleted, moved or locked (it is configuration,
      and one writer's Depth-infinity lock on it would stop every other writer);
    * macOS clutter names are refused as write targets where the share says so;
    * COPY and MOVE must name a destination inside a share the account may write,
      below its root, under the same clutter rule.
    """
    share = shares.get(target.share) if target.share else None
    if target.share is not None and share is None:
        # A name at the root that is no share answers like a share the account may not
        # read: which shares exist is not told to those who cannot see them.
        return Refusal.SHARE_DENIED
    write = method not in READ_METHODS
    refused = authorize(account, share, write)
    if refused:
        return refused
    if share is not None and target.is_share_root and method in ("DELETE", "MOVE", "LOCK"):
        return Refusal.SHARE_ROOT  # configuration, not content; a lock on it would freeze the share
    if write and share is not None and share.macos_clutter == "refuse" and is_macos_clutter(target.name):
        return Refusal.MACOS_CLUTTER
    if method not in ("COPY", "MOVE"):
        return None
    if destination is None:
        return Refusal.BAD_DESTINATION
    dest_share = shares.get(destination.share) if destination.share else None
    if dest_share is None:
        return Refusal.DEST_WRITE_DENIED
    refused = authorize(account, dest_share, True)
    if refused:
        return _DEST.get(refused, refused)
    if destination.is_share_root:
        return Refusal.DEST_SHARE_ROOT
    if dest_share.macos_clutter == "refuse" and is_macos_clutter(destination.name):
        return Refusal.DEST_MACOS_CLUTTER
    return None
