"""The enrolment page: a one-time link (``davserver cert invite``) where the user proves
the account's password (and TOTP code) and receives a certificate.

``GET /enrol/<token>`` shows the form; ``POST /enrol/<token>`` takes the form fields
``password``, ``otp`` (when the account has TOTP), and either ``p12_password`` (the server
makes the key and hands it over inside a PKCS#12 file) or ``csr`` (a PEM certificate
request: the key never leaves the smartcard, TPM or token that made it). Every other
path is 404: this app serves no file, no WebDAV and no ``/_davserver/`` page.

Answers (the scripted interface, issue 13 item 3):

- ``Accept: application/x-pkcs12`` with ``p12_password``: 200, the PKCS#12 bytes
  (``application/x-pkcs12``; modern AES, or the legacy file with ``legacy=1``);
  ``Accept: application/x-apple-aspen-config``: the configuration profile;
- with ``csr`` and no HTML in ``Accept``: 200, the certificate as PEM
  (``application/x-pem-file``);
- the form field ``format`` (:data:`FORMATS`; the form preselects it by User-Agent,
  :func:`default_format`): ``p12``, ``legacy_p12``, ``mobileconfig`` or ``pem`` answer that
  one file, typed (``application/x-pkcs12``, ``application/x-apple-aspen-config``,
  ``application/x-pem-file``) and ``Content-Disposition: attachment``, whatever ``Accept``
  says: iOS Safari installs a profile only from such a response, not from a ``data:`` link;
- a browser (``Accept`` naming ``text/html``) with ``format=page`` (the default): a result
  page carrying every download (modern and legacy ``.p12``, the ``.mobileconfig``, the CA,
  or the PEM certificate) as ``data:`` links, with instructions chosen by the User-Agent
  (:func:`platform_of`);
- a wrong password or code: 401, nothing issued, and the invitation's failure count
  grows (``enrolment.invite_max_failures`` burns it); spent, expired, burned or withdrawn:
  410; a token that never existed: 404; a locked-out address: 429;
- a GET of the link with punctuation glued to its end (``/enrol/<token>).``, pasted from
  an e-mail): 308 to ``/enrol/<token>`` (:data:`_PUNCTUATED`); any other path: 404.

Why ``data:`` links (or one file chosen before submitting): the server keeps no private
key after the response that carries it (issuance.py makes it, puts it in the PKCS#12
files and forgets it), so a second request
for "the legacy file, please" would have nothing to answer from. The page that answers the
POST holds every file at once, and ``Cache-Control: no-store`` keeps it out of caches.
"""

from __future__ import annotations

import base64
import contextlib
import html
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from .accounts import Account, AccountsWatcher
from .audit import AuditLog
from .auth.core import Authenticator, Decision
from .auth.lockout import Lockouts
from .config import Config
from .content_safety import FORM_PAGE_HEADERS
from .enrolment_audit import EnrolmentAudit
from .framing import BadContentLength, content_length
from .invitations import InvitationError, InvitationGone, Invitations, UnknownInvitation, token_digest
from .issuance import IssuanceError, check_csr
from .metering import BODY_DEADLINE
from .pki import PKIError
from .settings_schema import setting
from .store.base import StateStore, StoreUnavailable
from .watchdog import current_connection

__all__ = [
    "FORMATS", "GUIDE_PATH", "MAX_FORM_BYTES", "EnrolmentApp", "ResultFiles", "answer_delivery", "client_guide",
    "default_format", "platform_of", "read_form", "render_files",
]

log = logging.getLogger("davserver.enrolment")

#: Default of ``enrolment.form_bytes``, the largest form body accepted (bytes): a 4096-bit
#: RSA CSR is about 1.7 KB of PEM, three times that once form-encoded. A longer body is
#: refused 413 unread (the connection closes).
MAX_FORM_BYTES: int = setting("enrolment.form_bytes").default
#: Shortest PKCS#12 password accepted: the file travels by download and e-mail.
MIN_P12_PASSWORD = 8
#: The client guide (docs/clients.md) as this listener serves it, as plain text: the
#: instructions of the result page link to it.
GUIDE_PATH = "/enrol/help/clients.md"
_GUIDE_FILE = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
#: Largest guide served (bytes); a bigger file is not served.
_GUIDE_MAX = 1 << 20


def client_guide() -> bytes | None:
    """docs/clients.md of this installation, or None where it is not installed (a wheel
    without the docs) or larger than 1 MiB."""
    try:
        with _GUIDE_FILE.open("rb") as fh:
            data = fh.read(_GUIDE_MAX + 1)
    except OSError:
        return None
    return data if len(data) <= _GUIDE_MAX else None

_PATH = re.compile(r"/enrol/([A-Za-z0-9_-]{1,200})/?")
#: A link with up to 8 characters after the token that no token holds (a token is
#: ``secrets.token_urlsafe``: only ``[A-Za-z0-9_-]``) and no ``/``: the ``.`` or ``)`` or
#: ``>`` a mail client or a sentence glued to the link. GET and HEAD are redirected (308)
#: to the link without them, so the address bar shows the working link; a POST (a
#: script) must use the exact link.
_PUNCTUATED = re.compile(r"/enrol/([A-Za-z0-9_-]{1,200})[^A-Za-z0-9_/-]{1,8}")
P12_TYPE = "application/x-pkcs12"
PEM_TYPE = "application/x-pem-file"
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"

HEADERS = FORM_PAGE_HEADERS  # content_safety.py: the one set for the server's form pages

STYLE = """
body{font-family:system-ui,sans-serif;max-width:38rem;margin:3rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}label{display:block;margin:.8rem 0 .2rem}
input[type=password],input[type=text],textarea{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}fieldset{margin-top:1rem;border:1px solid #ddd}
.ok{background:#e6f4ea;padding:.6rem 1rem}.err{background:#fce8e6;padding:.6rem 1rem}
ul.files li{margin:.4rem 0}.rec{font-weight:600}small{color:#666}
"""

_REASONS = {200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 411: "Length Required",
            413: "Content Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}


def status_line(code: int) -> str:
    """The WSGI status string of ``code``, e.g. ``"404 Not Found"``; ``"<code> Error"`` for a
    code these pages never send (reason phrases of RFC 9110 §15, 413 by its new name)."""
    return f"{code} {_REASONS.get(code, 'Error')}"


# --- the visitor's platform -------------------------------------------------------------

_PLATFORMS = {
    "ios": "iPhone and iPad",
    "android": "Android",
    "macos": "macOS",
    "windows": "Windows",
    "linux": "Linux",
    "other": "your device",
}


def platform_of(user_agent: str) -> tuple[str, bool]:
    """The platform a User-Agent names (``ios``, ``android``, ``macos``, ``windows``,
    ``linux`` or ``other``) and whether its certificate importer needs the legacy
    (3DES/SHA-1) PKCS#12 file: Android 13 and older reject the AES file with a
    misleading "wrong password", and so do iOS's and macOS's Keychain importers and
    Windows before 10 (``Windows NT 6.x``); Windows 10+ and Linux read the modern file.
    iPadOS 13+ sends a macOS User-Agent; the legacy file and the profile serve both."""
    ua = user_agent or ""
    if re.search(r"iPhone|iPad|iPod", ua):
        return "ios", True
    if "Android" in ua:
        return "android", True
    if "Macintosh" in ua or "Mac OS X" in ua:
        return "macos", True
    windows = re.search(r"Windows NT (\d+)", ua)
    if windows:
        return "windows", int(windows[1]) < 10
    if "Linux" in ua or "X11" in ua:
        return "linux", False
    return "other", False


def _instructions(platform: str, *, csr: bool) -> str:
    """Install steps for `platform` (HTML), matching docs/clients.md's sections."""
    if csr:
        return (
            "<p>Your key stayed where it was made. Import the certificate next to it "
            "(for a smartcard or token: its own tool, e.g. <code>pkcs11-tool --write-object</code> "
            "or <code>ykman piv certificates import</code>), and trust the CA certificate.</p>"
        )
    steps = {
        "windows": "<ol><li>Open the <code>.p12</code> file: the Certificate Import Wizard starts; choose "
        "<i>Current User</i> and type the file's password.</li><li>Open the CA certificate, <i>Install "
        "Certificate…</i>, <i>Place all certificates in the following store: Trusted Root Certification "
        "Authorities</i>.</li><li>Map the share in File Explorer (<i>Map network drive</i>) or open it "
        "in Edge or Chrome.</li></ol>",
        "macos": "<ol><li>Open the <code>.mobileconfig</code> profile, then <i>System Settings → Privacy "
        "&amp; Security → Profiles</i> (or <i>General → Device Management</i>) and install it: it holds "
        "your certificate and the CA.</li><li>Or double-click the legacy <code>.p12</code> (Keychain "
        "Access, login keychain) and the CA certificate, and set the CA to <i>Always Trust</i>.</li>"
        "<li>Finder: <i>Go → Connect to Server</i>, the share's https URL.</li></ol>",
        "ios": "<ol><li>Tap the <code>.mobileconfig</code> profile and <i>Allow</i> the download. (If "
        "Safari does nothing, ask for a new link and keep <i>.mobileconfig profile</i> chosen on the form: "
        "Safari installs a profile it downloads, not one from this page.)</li>"
        "<li><i>Settings → Profile Downloaded → Install</i>; type your passcode, then the profile's "
        "password (the one you chose above).</li><li><i>Settings → General → About → Certificate Trust "
        "Settings</i>: switch on full trust for the davserver CA.</li><li>Safari and apps that use the "
        "system key chain (Files with a WebDAV app, Documents, …) can now present the certificate.</li>"
        "</ol>",
        "android": "<ol><li>Download the legacy <code>.p12</code> (listed first for you: Android 13 and older "
        "refuse the modern file and say the password is wrong) and the CA certificate.</li>"
        "<li><i>Settings → Security → Encryption &amp; credentials → Install a certificate → "
        "VPN &amp; app user certificate</i>, "
        "pick the file, type its password.</li><li>Install the CA certificate the same way "
        "(<i>CA certificate</i>).</li><li>Chrome and apps that use the system key chain ask you to "
        "choose the certificate when they connect.</li></ol>",
        "linux": "<ol><li>Firefox: <i>Settings → Privacy &amp; Security → Certificates → View Certificates "
        "→ Your Certificates → Import…</i> the <code>.p12</code>; <i>Authorities → Import…</i> the CA "
        "certificate.</li><li>Chrome/Chromium: <i>Settings → Privacy and security → Security → Manage "
        "certificates</i>, the same two imports.</li><li>davfs2, rclone and curl use the PEM pair: "
        "<code>openssl pkcs12 -in NAME.p12 -out NAME.pem -nodes</code>.</li></ol>",
    }
    return steps.get(platform, steps["linux"] + steps["windows"])


# --- the downloads ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultFiles:
    """What one issuance hands over (issuance.Delivery's bytes), with the file names to use."""

    account: str
    serial: str
    not_after: datetime
    certificate_pem: bytes
    ca_pem: bytes
    p12: bytes | None
    legacy_p12: bytes | None
    mobileconfig: bytes | None

    @classmethod
    def from_delivery(cls, delivery: Any) -> ResultFiles:
        """From an ``issuance.Delivery``."""
        issued = delivery.issued
        return cls(issued.account, issued.serial, issued.not_after, delivery.certificate_pem, delivery.ca_pem,
                   delivery.p12, delivery.legacy_p12, delivery.mobileconfig)


def _data_link(data: bytes, mime: str, name: str, label: str, *, recommended: bool) -> str:
    href = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    cls = ' class="rec"' if recommended else ""
    mark = " <small>(recommended for your device)</small>" if recommended else ""
    return f'<li{cls}><a href="{html.escape(href)}" download="{html.escape(name)}">{html.escape(label)}</a>{mark}</li>'


def render_files(files: ResultFiles, user_agent: str, *, docs_url: str = GUIDE_PATH) -> str:
    """The downloads and instructions of a result page (HTML fragment). The file the
    visitor's platform imports is marked recommended and listed first."""
    platform, legacy = platform_of(user_agent)
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", files.account)
    links: list[tuple[bool, str]] = []
    if files.p12 is not None:
        links.append((not legacy, _data_link(files.p12, P12_TYPE, f"{name}.p12",
                                             f"{name}.p12 (modern: Windows 10+, Linux, Firefox, Chrome)",
                                             recommended=not legacy)))
    if files.legacy_p12 is not None:
        rec = legacy and platform != "ios"
        links.append((rec, _data_link(files.legacy_p12, P12_TYPE, f"{name}-legacy.p12",
                                      f"{name}-legacy.p12 (legacy: Android, macOS Keychain, older Windows)",
                                      recommended=rec)))
    if files.mobileconfig is not None:
        rec = platform == "ios"
        links.append((rec, _data_link(files.mobileconfig, MOBILECONFIG_TYPE, f"{name}.mobileconfig",
                                      f"{name}.mobileconfig (iPhone, iPad, Mac: certificate and CA in one profile)",
                                      recommended=rec)))
    if files.p12 is None:
        links.append((True, _data_link(files.certificate_pem, PEM_TYPE, f"{name}.crt",
                                       f"{name}.crt (your certificate, PEM)", recommended=True)))
    links.append((False, _data_link(files.ca_pem, PEM_TYPE, "davserver-ca.crt",
                                    "davserver-ca.crt (the server's CA certificate)", recommended=False)))
    links.sort(key=lambda item: not item[0])
    e = html.escape
    return "".join([
        f'<p class="ok">Certificate {e(files.serial)} for <b>{e(files.account)}</b> issued; valid until '
        f"{e(files.not_after.astimezone(UTC).strftime('%Y-%m-%d'))}.</p>",
        "<p>Save the files now: this page is the only copy (the server does not keep your key). "
        "Reloading it does not issue another certificate.</p>",
        '<ul class="files">', *(link for _, link in links), "</ul>",
        f"<h2>Install on {e(_PLATFORMS[platform])}</h2>", _instructions(platform, csr=files.p12 is None),
        f'<p>Other devices and programs: <a href="{e(docs_url)}">the client guide</a> (docs/clients.md).</p>',
    ])


def _accepts(environ: dict[str, Any], mime: str) -> bool:
    return mime in environ.get("HTTP_ACCEPT", "").lower()


#: Values of the form field ``format``: what a successful POST answers. ``page`` (the
#: default) is the result page with every file as a ``data:`` link (or, for a script that
#: does not accept HTML, the file its ``Accept`` names); the others answer that one file
#: with its own Content-Type and ``Content-Disposition: attachment``.
FORMATS: dict[str, str] = {
    "page": "a page with every file and the instructions",
    "p12": ".p12 (modern: Windows 10+, Linux, Firefox, Chrome)",
    "legacy_p12": ".p12, legacy (Android, macOS Keychain, older Windows)",
    "mobileconfig": ".mobileconfig profile (iPhone, iPad, Mac)",
    "pem": "certificate (PEM), for a CSR",
}


def default_format(user_agent: str) -> str:
    """The ``format`` the form preselects for a User-Agent: ``mobileconfig`` for iOS and
    iPadOS (Safari installs a profile only from a response typed
    ``application/x-apple-aspen-config``, not from a ``data:`` link, and the profile
    holds the CA too), else ``page``: Android needs the legacy file *and* the CA
    certificate, which the page offers together, the legacy file first. iPadOS 13+
    claims to be a Mac: it gets ``page``, whose profile link a Mac opens; such a
    visitor picks the profile in the list."""
    platform, _legacy = platform_of(user_agent)
    return {"ios": "mobileconfig"}.get(platform, "page")


def _file_answer(start_response: Callable[..., Any], files: ResultFiles, fmt: str) -> list[bytes]:
    """One file of `files` as a download: `fmt` is a :data:`FORMATS` key other than ``page``.
    With a CSR (no PKCS#12) every file format answers the certificate (PEM): it is the only
    file there is."""
    name = files.account
    if files.p12 is None or fmt == "pem":
        return _send(start_response, 200, PEM_TYPE, files.certificate_pem, f"{name}.crt")
    if fmt == "mobileconfig" and files.mobileconfig is not None:
        return _send(start_response, 200, MOBILECONFIG_TYPE, files.mobileconfig, f"{name}.mobileconfig")
    if fmt == "legacy_p12" and files.legacy_p12 is not None:
        return _send(start_response, 200, P12_TYPE, files.legacy_p12, f"{name}-legacy.p12")
    return _send(start_response, 200, P12_TYPE, files.p12, f"{name}.p12")


def answer_delivery(
    environ: dict[str, Any], start_response: Callable[..., Any], files: ResultFiles, form: dict[str, str],
    page: Callable[[str], str], *, docs_url: str = GUIDE_PATH,
) -> tuple[list[bytes], int]:
    """The 200 answer to a successful enrolment or renewal POST: the one file the form's
    ``format`` names (:data:`FORMATS`, checked by :func:`check_delivery_form`), else the
    bytes a script asked for (``Accept``: PKCS#12, configuration profile or PEM) or, for a
    browser (``text/html``), the result page, made by `page` around :func:`render_files`.
    Returns (body, status)."""
    fmt = form.get("format", "page") or "page"
    if fmt != "page":
        return _file_answer(start_response, files, fmt), 200
    if not _accepts(environ, "text/html"):
        if files.p12 is None:
            return _send(start_response, 200, PEM_TYPE, files.certificate_pem, f"{files.account}.crt"), 200
        if _accepts(environ, MOBILECONFIG_TYPE) and files.mobileconfig is not None:
            return _send(start_response, 200, MOBILECONFIG_TYPE, files.mobileconfig,
                         f"{files.account}.mobileconfig"), 200
        legacy = form.get("legacy", "") in ("1", "true", "yes", "on")
        data = files.legacy_p12 if legacy and files.legacy_p12 is not None else files.p12
        return _send(start_response, 200, P12_TYPE, data, f"{files.account}.p12"), 200
    body = page(render_files(files, environ.get("HTTP_USER_AGENT", ""), docs_url=docs_url))
    return _send(start_response, 200, "text/html; charset=utf-8", body.encode("utf-8")), 200


def _send(start_response: Callable[..., Any], code: int, mime: str, body: bytes, filename: str | None = None,
          extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    headers = [("Content-Type", mime), ("Content-Length", str(len(body))), *HEADERS, *extra]
    if filename is not None:
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", filename)
        headers.append(("Content-Disposition", f'attachment; filename="{safe}"'))
    start_response(status_line(code), headers)
    return [body]


def read_form(environ: dict[str, Any], *, max_bytes: int = MAX_FORM_BYTES, deadline: float = 10.0) -> (
        dict[str, str] | int):
    """The urlencoded form of a POST, or the status refusing it: 411 without
    ``Content-Length``, 413 above `max_bytes`, 400 for a body that is not UTF-8 form
    data or holds more than 12 fields. The body must arrive within `deadline` seconds
    (the connection's watchdog ends the read otherwise): a body cut by that deadline is
    408 (RFC 9110 §15.5.9), as on the main listener (metering.BodyTimeout)."""
    try:
        size = content_length(environ)
    except BadContentLength:
        size = None
    if size is None:
        return 413 if environ.get("HTTP_TRANSFER_ENCODING") else 411
    if size > max_bytes:
        return 413
    conn = current_connection()
    watchdog = getattr(conn, "watchdog", None)
    # The body counts against its address's cap like the headers did (the enrolment
    # listener's enrolment_listener.AddressPhase; the main listener's phase counts headers only).
    phase = getattr(conn, "header_phase", None)
    phase = phase if getattr(phase, "counts_body", False) else None
    if watchdog is not None:
        watchdog.arm(conn, time.monotonic() + deadline, BODY_DEADLINE)
    if phase is not None and size:
        phase.enter(conn, "request body")
    try:
        body = environ["wsgi.input"].read(size) if size else b""
    finally:
        if phase is not None:
            phase.leave(conn)
        if watchdog is not None:
            watchdog.disarm(conn)
    if len(body) != size:
        return 408 if getattr(conn, "deadline_passed", None) == BODY_DEADLINE else 400
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=12, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return 400
    return {k: v[0] for k, v in parsed.items()}


def page_html(title: str, content: str) -> str:
    """A whole HTML page (str) with the house style: ``title`` escaped as the title and the
    heading, ``content`` inserted as it is (the caller escapes what it puts in). Also the
    step-up page's frame (stepup.py)."""
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", content, "</body></html>",
    ])


def credential_fields(account: Account, *, code_required: bool) -> str:
    """The password (and code) inputs of the enrolment and renewal forms."""
    parts = [
        "<label for=password>Your password</label>",
        "<input id=password name=password type=password required autocomplete=current-password>",
    ]
    if code_required:
        parts += [
            "<label for=otp>Code from your authenticator app</label>",
            "<input id=otp name=otp type=text inputmode=numeric pattern=[0-9]{6} maxlength=6 required "
            "autocomplete=one-time-code>",
        ]
    return "".join(parts)


def delivery_fields(user_agent: str) -> str:
    """The choice between a server-made key (PKCS#12 password) and a CSR, and of what to
    receive (``format``, preselected by :func:`default_format`)."""
    platform, _legacy = platform_of(user_agent)
    chosen = default_format(user_agent)
    options = "".join(
        f'<option value={value}{" selected" if value == chosen else ""}>{html.escape(label)}</option>'
        for value, label in FORMATS.items()
    )
    return "".join([
        "<fieldset><legend>Your new certificate file</legend>",
        f"<label for=p12_password>Choose a password for the certificate file (at least {MIN_P12_PASSWORD} "
        "characters; you type it once when you install the file)</label>",
        "<input id=p12_password name=p12_password type=password minlength=8 autocomplete=new-password>",
        "<details><summary>I have a certificate request (CSR) instead</summary>",
        "<label for=csr>CSR (PEM), for a key kept on a smartcard, TPM or token</label>",
        "<textarea id=csr name=csr rows=6></textarea></details>",
        f"<label for=format>What to receive</label><select id=format name=format>{options}</select>",
        "<p><small>iPhone and iPad install the profile straight from the download; the page "
        "lists every file for the other devices.</small></p></fieldset>",
        f"<p><small>Instructions for {html.escape(_PLATFORMS[platform])} follow.</small></p>",
    ])


def check_delivery_form(form: dict[str, str]) -> tuple[str | None, bytes | None, str]:
    """(p12_password, csr_pem, error): exactly one of a PKCS#12 password (at least
    ``MIN_P12_PASSWORD`` characters) or a CSR, and a ``format`` (when given) among
    :data:`FORMATS`, ``pem`` only with a CSR; `error` is "" when the form is usable."""
    csr = form.get("csr", "").strip()
    p12_password = form.get("p12_password", "")
    fmt = form.get("format", "page") or "page"
    if fmt not in FORMATS:
        return None, None, f"Unknown format {fmt[:40]!r}; choose one of {', '.join(FORMATS)}."
    if fmt == "pem" and not csr:
        return None, None, "The PEM certificate alone is for a CSR; choose a .p12, the profile or the page."
    if csr:
        if p12_password:
            return None, None, "Give either a file password or a CSR, not both."
        return None, csr.encode("utf-8"), ""
    if len(p12_password) < MIN_P12_PASSWORD:
        return None, None, f"Choose a file password of at least {MIN_P12_PASSWORD} characters."
    return p12_password, None, ""


class EnrolmentApp:
    """The WSGI application of the enrolment listener (enrolment_listener.py).

    `issue(account, p12_password=..., csr_pem=...)` is ``issuance.deliver`` bound to the
    instance's home: it issues and binds the certificate and raises ``IssuanceError`` (a
    ValueError) for a CSR it refuses. Unknown tokens count per address (``throttle``
    settings): ``throttle.lock_after`` of them within ``throttle.window_seconds`` lock the
    address out of this listener for ``throttle.lock_seconds`` (429)."""

    def __init__(
        self,
        config: Config,
        *,
        accounts: AccountsWatcher,
        authenticator: Authenticator,
        invitations: Invitations,
        store: StateStore,
        audit: AuditLog,
        issue: Callable[..., Any],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.auth = authenticator
        self.invitations = invitations
        self.store = store
        #: Unknown links lock an address out of enrolment (``throttle.*``, auth/lockout.py).
        self.lockouts = Lockouts(store.lockouts, config.throttle)
        #: Every line goes through the listener's one redaction (enrolment_audit.py).
        self.audit: AuditLog = EnrolmentAudit.wrap(audit)
        self.issue = issue
        self.clock = clock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.monotonic()
        record: dict[str, Any] = {"account": None, "reason": "ok"}
        sent: list[int] = [0]

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            record["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            body = self._handle(environ, recording, record)
        except StoreUnavailable as exc:
            log.error("enrolment: %s", exc)
            record["reason"] = "store_unavailable"
            body = self._plain(recording, 503, "temporarily unavailable, try again shortly\n", environ)
        except Exception:
            log.exception("enrolment: %s %s failed", environ.get("REQUEST_METHOD"), record.get("invitation", ""))
            record.update(reason="error", status=500)
            self._audit(environ, record, 0, started)
            raise
        sent[0] = sum(len(b) for b in body)
        self._audit(environ, record, sent[0], started)
        return body

    # --- the request -------------------------------------------------------------------

    def _handle(self, environ: dict[str, Any], start_response: Callable[..., Any],
                record: dict[str, Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        peer = environ.get("REMOTE_ADDR", "")
        if environ.get("PATH_INFO") == GUIDE_PATH and method in ("GET", "HEAD"):
            return self._guide(start_response, environ, record)
        punctuated = _PUNCTUATED.fullmatch(environ.get("PATH_INFO", "")) if match is None else None
        if punctuated is not None and method in ("GET", "HEAD"):
            record["reason"] = "punctuated_link"
            body = _send(start_response, 308, "text/plain; charset=utf-8", b"", extra=[
                ("Location", f"/enrol/{punctuated[1]}")])
            return body
        if match is None:
            record["reason"] = "not_found"
            return self._plain(start_response, 404, "not found\n", environ)
        token = match[1]
        record["invitation"] = token_digest(token)[:16]
        if method not in ("GET", "HEAD", "POST"):
            record["reason"] = "bad_method"
            return self._plain(start_response, 405, "method not allowed\n", environ, [("Allow", "GET, HEAD, POST")])
        now = self.clock()
        stamp = now.timestamp()
        if self.lockouts.is_enrolment_locked_out(peer, stamp):
            record["reason"] = "locked"
            return self._plain(start_response, 429, "too many attempts; try again later\n", environ)
        try:
            invitation = self.invitations.peek(token, now=stamp)
        except UnknownInvitation:
            record["reason"] = "unknown_invitation"
            self.lockouts.fail_enrolment(peer, stamp)
            return self._plain(start_response, 404, "not found\n", environ)
        except InvitationGone as exc:
            record["reason"] = f"invitation_{exc.reason}"
            return self._gone(start_response, environ, exc)
        record["account"] = invitation.account
        account = self.accounts.current().get(invitation.account)
        if account is None or not account.enabled:
            record["reason"] = "disabled" if account is not None else "unknown_account"
            return self._gone(start_response, environ, InvitationGone("withdrawn"))
        if method in ("GET", "HEAD"):
            body = self._form_page(start_response, environ, account, 200)
            return [b""] if method == "HEAD" else body
        return self._post(environ, start_response, record, token, account, peer, now)

    def _post(self, environ: dict[str, Any], start_response: Callable[..., Any], record: dict[str, Any],
              token: str, account: Account, peer: str, now: datetime) -> list[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin != f"https://{environ.get('HTTP_HOST', '')}":
            record["reason"] = "csrf"
            return self._plain(start_response, 403, "forbidden\n", environ)
        form = read_form(environ, max_bytes=self.config.enrolment.form_bytes,
                         deadline=self.config.limits.header_seconds)
        if isinstance(form, int):
            record["reason"] = "request_timeout" if form == 408 else "bad_form"
            return self._plain(start_response, form, "the form could not be read\n", environ, [("Connection", "close")])
        record["bytes_in"] = content_length(environ) or 0  # valid: the form was read
        p12_password, csr_pem, problem = check_delivery_form(form)
        if problem:
            record["reason"] = "bad_form"
            return self._form_page(start_response, environ, account, 400, error=problem)
        decision = self.auth.verify_factors(
            account=account, holder=f"enrol-{token_digest(token)[:32]}", password=form.get("password", ""),
            code=form.get("otp", ""), now=now, peer=peer,
        )
        if not decision.allowed:
            return self._refused(environ, start_response, record, token, account, decision)
        if csr_pem is not None:
            try:
                # refused before the link is spent: the user may try another
                check_csr(csr_pem, max_bytes=self.config.enrolment.csr_bytes)
            except IssuanceError as exc:
                record["reason"] = "bad_csr"
                return self._plain(start_response, 400, f"certificate request refused: {exc}\n", environ)
        try:
            self.invitations.spend(token, now=now.timestamp())
        except InvitationError as exc:  # another request spent it a moment ago
            record["reason"] = "invitation_spent"
            return self._gone(start_response, environ, exc if isinstance(exc, InvitationGone) else InvitationGone(
                "spent"))
        # The spend above is the claim that makes racing POSTs issue once; when issuing then
        # fails (the CA key unreadable, the disk full, the accounts file locked), nothing was
        # issued or bound (issuance._bind_or_forget) and the claim is given back: the link
        # works again once the fault is fixed ("a failed command changes nothing").
        try:
            delivery = self.issue(account.name, p12_password=p12_password, csr_pem=csr_pem)
        except BaseException as exc:
            record["invitation_restored"] = self._unspend(token)
            if not isinstance(exc, IssuanceError | PKIError | OSError):
                raise  # __call__ logs and audits it (500)
            record["reason"] = "issue_failed"
            log.error("enrolment for %s: nothing issued: %s", account.name, exc)
            return self._plain(start_response, 503, "the certificate could not be issued; the link still works: "
                               "try again later, or ask your administrator\n", environ)
        files = ResultFiles.from_delivery(delivery)
        record["reason"] = "enrolled"
        record["issued_serial"] = files.serial
        body, _ = answer_delivery(
            environ, start_response, files, form,
            lambda fragment: page_html("Your certificate", fragment),
        )
        return body

    def _unspend(self, token: str) -> bool:
        """Give back the spend of `token` after a failed issuance; False when that failed too
        (logged: the administrator sends a new link)."""
        try:
            return self.invitations.unspend(token)
        except (InvitationError, StoreUnavailable) as exc:
            log.error("enrolment: the link could not be made usable again after a failed issuance: %s", exc)
            return False

    def _refused(self, environ: dict[str, Any], start_response: Callable[..., Any], record: dict[str, Any],
                 token: str, account: Account, decision: Decision) -> list[bytes]:
        record["reason"] = str(decision.reason)
        if decision.reason != "locked":
            with contextlib.suppress(InvitationError):  # burned by a racing request: nothing to count
                record["invitation_failures"] = self.invitations.record_failure(token)
        if decision.delay:
            time.sleep(decision.delay)  # growing delay, as for a sign-in
        if _accepts(environ, "text/html"):
            return self._form_page(start_response, environ, account, 401, error="Invalid credentials.")
        return self._plain(start_response, 401, "invalid credentials\n", environ)

    def _guide(self, start_response: Callable[..., Any], environ: dict[str, Any],
               record: dict[str, Any]) -> list[bytes]:
        guide = client_guide()
        if guide is None:
            record["reason"] = "not_found"
            return self._plain(start_response, 404, "not found\n", environ)
        record["reason"] = "guide"
        body = _send(start_response, 200, "text/plain; charset=utf-8", guide)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else body

    # --- answers -----------------------------------------------------------------------

    def _gone(self, start_response: Callable[..., Any], environ: dict[str, Any], exc: InvitationGone) -> list[bytes]:
        if _accepts(environ, "text/html"):
            text = page_html("This link no longer works", f"<p class=err>{html.escape(str(exc).capitalize())}.</p>"
                             "<p>Ask your administrator for a new invitation.</p>")
            return _send(start_response, 410, "text/html; charset=utf-8", text.encode("utf-8"))
        return _send(start_response, 410, "text/plain; charset=utf-8", f"{exc}\n".encode())

    def _plain(self, start_response: Callable[..., Any], code: int, text: str, environ: dict[str, Any],
               extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
        body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else text.encode("utf-8")
        return _send(start_response, code, "text/plain; charset=utf-8", body, extra=extra)

    def _form_page(self, start_response: Callable[..., Any], environ: dict[str, Any], account: Account, code: int,
                   *, error: str = "") -> list[bytes]:
        e = html.escape
        ua = environ.get("HTTP_USER_AGENT", "")
        content = "".join([
            f'<p class="err">{e(error)}</p>' if error else "",
            f"<p>You were invited to get a certificate for the account <b>{e(account.name)}</b>. "
            "It becomes your key to the files: your device presents it when it connects.</p>",
            f'<form method=post action="{e(environ.get("PATH_INFO", ""))}" autocomplete=off>',
            credential_fields(account, code_required=account.totp_secret is not None),
            delivery_fields(ua),
            "<button type=submit>Get my certificate</button></form>",
        ])
        text = page_html("Get your certificate", content)
        return _send(start_response, code, "text/html; charset=utf-8", text.encode("utf-8"))

    def _audit(self, environ: dict[str, Any], record: dict[str, Any], sent: int, started: float) -> None:
        """One line per request, shaped like the guard's, written through
        :class:`~davserver.enrolment_audit.EnrolmentAudit`: the token itself is never written
        (the path says ``/enrol/`` and the first 16 hex digits of its SHA-256, as
        ``invitation`` does)."""
        status = int(record.get("status", 0))
        allowed = status < 400
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "listener": "enrolment",
            "peer": environ.get("REMOTE_ADDR"),
            "cert_serial": None,
            "cert_fingerprint": None,
            "cert_subject": None,
            "account": record.get("account"),
            "share": None,
            "method": environ.get("REQUEST_METHOD"),
            "path": _printable(environ.get("PATH_INFO", "")),
            "status": status,
            "bytes_in": record.get("bytes_in", 0),
            "bytes_out": sent,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "decision": "allow" if allowed else "deny",
            "reason": record.get("reason", "ok"),
        }
        for extra in ("invitation", "issued_serial", "invitation_failures", "invitation_restored"):
            if extra in record:
                line[extra] = record[extra]
        self.audit.write(line)


def _printable(path: str) -> str:
    return path.encode("latin-1", "replace").decode("utf-8", "backslashreplace")[:2048]
