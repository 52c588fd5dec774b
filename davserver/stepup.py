"""The browser step-up page: prove password + TOTP code once in a form, and every
client using the same certificate gets in with the password alone until the
two-factor session (a "grant" in the code and the audit log) ends. Served at a
reserved path no share name can take.

``GET /_davserver/?next=/share/folder/`` (where a browser refused on a share that needs
a code is sent, guard.py) carries ``next`` through the form; after a correct code the
page links back to it, when it is a same-origin path (browser_pages.safe_next).
The page is laid out and worded for people (browser_pages.py): the certificate by its
name and expiry, its serial behind a details toggle, times in the browser's local time.

The page is only reachable with a valid client certificate (the TLS layer
demands it), and its forms carry a CSRF token bound to that certificate, so
another site cannot drive them through the user's browser.

It also shows the certificate's expiry and, within ``enrolment.renew_before_days``,
offers renewal (renewal.py): ``POST /_davserver/renew`` with ``password``, ``otp``
(when the account has TOTP) and ``p12_password`` or ``csr``, answered as the enrolment
page answers (enrolment_pages.answer_delivery: PKCS#12, PEM or a result page). A
script's POST (no ``Origin``, no ``Sec-Fetch-Site``) needs no CSRF token: the password
and the certificate of the connection are its proof; a browser's needs one.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from .accounts import Account
from .auth.core import Authenticator, Decision
from .auth.identity import CertIdentity
from .browser_pages import LOCAL_TIME_SCRIPT, html_headers, page_bytes, safe_next, time_html
from .content_safety import FORM_PAGE_HEADERS
from .csrf import CsrfTokens, browser_origin_refusal, is_browser
from .enrolment_pages import (
    ResultFiles,
    answer_delivery,
    check_delivery_form,
    client_guide,
    credential_fields,
    delivery_fields,
    page_html,
    read_form,
    status_line,
)
from .framing import BadContentLength, content_length
from .pki import PKIError
from .renewal import Renewals, days_left

__all__ = ["PREFIX", "StepUpPage"]

#: Share names start with a lower-case letter or digit, so this can never be a share.
PREFIX = "_davserver"
_MAX_FORM = 8192
_SECURITY_HEADERS = FORM_PAGE_HEADERS  # content_safety.py: shared with the enrolment pages

#: After a refused code: why it may have failed, without saying which factor was wrong.
REFUSED = "The password or the code was not accepted. Each code can be used once — wait for the next one."
#: Shown when the form's token is missing, expired or from another site.
EXPIRED = "The form expired. Please try again."


class StepUpPage:
    """The pages under ``/_davserver/`` (see the module docstring), called by the guard once
    the certificate maps to an enabled account. ``clock`` gives the aware UTC time of every
    decision; ``csrf`` signs the forms' tokens (one per server, shared with the listing);
    ``renewals`` None offers no renewal."""

    def __init__(self, authenticator: Authenticator, clock: Callable[[], datetime],
                 renewals: Renewals | None = None, csrf: CsrfTokens | None = None) -> None:
        self.auth = authenticator
        self.clock = clock
        self.renewals = renewals
        self.csrf = csrf if csrf is not None else CsrfTokens()  # csrf.py: shared with the listing

    # --- CSRF tokens bound to the certificate ------------------------------------

    def _token(self, cert: CertIdentity) -> str:
        return self.csrf.issue(cert)

    def _token_ok(self, cert: CertIdentity, token: str) -> bool:
        return self.csrf.valid(cert, token)

    @staticmethod
    def _same_origin(environ: dict[str, Any]) -> bool:
        return browser_origin_refusal(environ) is None

    # --- WSGI --------------------------------------------------------------------

    def handle(
        self, environ: dict[str, Any], start_response: Callable[..., Any], account: Account, cert: CertIdentity
    ) -> tuple[Iterable[bytes], Decision]:
        """Answer one request of ``account`` on ``cert``: GET/HEAD the page (or the client
        guide ``clients.md``), POST ``stepup`` (password + code open a grant), ``end`` (end
        it) or ``renew``; anything else 405. Returns the body and the Decision for the audit
        line (``stepup``, ``grant_ended``, ``csrf`` 403, a sign-in failure with its delay
        already waited …). Raises StoreUnavailable (the guard answers 503)."""
        method = environ.get("REQUEST_METHOD", "GET")
        action = environ.get("PATH_INFO", "").rstrip("/").rsplit("/", 1)[-1]
        ok = Decision(True, 0, "ok", account)
        if method in ("GET", "HEAD") and action == "clients.md":
            guide = client_guide()
            if guide is not None:
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(guide))), *_SECURITY_HEADERS])
                return [b"" if method == "HEAD" else guide], ok
        if method in ("GET", "HEAD"):
            query = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=10)
            following = (query.get("next") or [""])[0]
            return self._page(start_response, account, cert, 200, head=method == "HEAD", following=following), ok
        if method == "POST" and action == "renew":
            return self._renew(environ, start_response, account, cert)
        if method != "POST" or action not in ("stepup", "end"):
            start_response("405 Method Not Allowed", [("Allow", "GET, POST"), ("Content-Length", "0")])
            return [b""], Decision.deny("bad_request", account, status=405)
        form = self._form(environ)
        following = form.get("next", "") if form is not None else ""
        if form is None or not self._same_origin(environ) or not self._token_ok(cert, form.get("csrf", "")):
            return self._page(start_response, account, cert, 403, error=EXPIRED, following=following), (
                Decision.deny("csrf", account, status=403)
            )
        if action == "end":
            self.auth.end_grant(account, cert)
            return self._page(start_response, account, cert, 200,
                              notice="Your two-factor session has ended."), Decision(True, 0, "grant_ended", account)
        decision = self.auth.step_up(
            account=account, cert=cert, password=form.get("password", ""), code=form.get("code", ""),
            now=self.clock(), peer=environ.get("REMOTE_ADDR", ""),
        )
        if not decision.allowed:
            if decision.delay:
                time.sleep(decision.delay)
            return self._page(start_response, account, cert, 403, error=REFUSED, following=following), decision
        return self._page(start_response, account, cert, 200, notice="Code accepted: your two-factor session is open.",
                          following=following, done=True), Decision(
            True, 0, "stepup", account, decision.factors, decision.grant_expires
        )

    def _renew(
        self, environ: dict[str, Any], start_response: Callable[..., Any], account: Account, cert: CertIdentity
    ) -> tuple[Iterable[bytes], Decision]:
        """``POST /_davserver/renew``: a successor for the connection's certificate (see the module docstring)."""
        now = self.clock()
        browser = is_browser(environ)  # the guard's decision too (one for every browser write)
        form = read_form(environ, max_bytes=self.renewals.form_bytes if self.renewals is not None else 16384)
        if isinstance(form, int):
            return self._plain(start_response, form, "the form could not be read\n", close=True), Decision.deny(
                "bad_request", account, status=form)
        if browser and (not self._same_origin(environ) or not self._token_ok(cert, form.get("csrf", ""))):
            return self._page(start_response, account, cert, 403, error=EXPIRED), (
                Decision.deny("csrf", account, status=403)
            )
        if self.renewals is None or not self.renewals.due(cert, now):
            days = self.renewals.renew_before_days if self.renewals is not None else 0
            text = f"renewal opens {days} days before the certificate expires\n"
            return self._plain(start_response, 409, text), Decision.deny("renew_not_due", account, status=409)
        p12_password, csr_pem, problem = check_delivery_form(form)
        if problem:
            return self._plain(start_response, 400, problem + "\n"), Decision.deny("bad_request", account, status=400)
        decision = self.auth.verify_factors(
            account=account, holder=cert.fingerprint, password=form.get("password", ""), code=form.get("otp", ""),
            now=now, peer=environ.get("REMOTE_ADDR", ""),
        )
        if not decision.allowed:
            if decision.delay:
                time.sleep(decision.delay)
            if browser:
                return self._page(start_response, account, cert, 403, error=REFUSED), decision
            return self._plain(start_response, 401, "invalid credentials\n"), decision
        try:
            delivery = self.renewals.renew(cert, p12_password=p12_password, csr_pem=csr_pem)
        except (ValueError, PKIError) as exc:  # IssuanceError: a refused CSR, a certificate not ours
            return self._plain(start_response, 409, f"cannot renew: {exc}\n"), Decision.deny(
                "renew_refused", account, status=409)
        files = ResultFiles.from_delivery(delivery)
        body, _ = answer_delivery(environ, start_response, files, form, lambda fragment: page_html(
            "Your renewed certificate", fragment), docs_url=f"/{PREFIX}/clients.md")
        return body, Decision(True, 0, "renewed", account, decision.factors)

    @staticmethod
    def _plain(start_response: Callable[..., Any], status: int, text: str, *, close: bool = False) -> list[bytes]:
        body = text.encode("utf-8")
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   *_SECURITY_HEADERS]
        if close:
            headers.append(("Connection", "close"))
        start_response(status_line(status), headers)
        return [body]

    @staticmethod
    def _form(environ: dict[str, Any]) -> dict[str, str] | None:
        try:
            length = content_length(environ) or 0
        except BadContentLength:
            return None
        if length <= 0 or length > _MAX_FORM:
            return None
        body = environ["wsgi.input"].read(length)
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return None
        return {k: v[0] for k, v in parsed.items()}

    def _renewal_form(self, account: Account, cert: CertIdentity, token: str) -> str:
        """The renewal section: offered within ``enrolment.renew_before_days`` of expiry."""
        if self.renewals is None or not self.renewals.due(cert, self.clock()):
            return ""
        return "".join([
            '<h2 id=renew>Renew your certificate</h2>',
            "<p>Your certificate expires soon. Get its successor now and install it on each device; "
            "the current one keeps working until it expires"
            + (", or until the new one is first used." if self.renewals.revoke_renewed else ".") + "</p>",
            f'<form method=post action="/{PREFIX}/renew" autocomplete=off>',
            f'<input type=hidden name=csrf value="{html.escape(token)}">',
            credential_fields(account, code_required=account.totp_secret is not None),
            delivery_fields(""),
            "<button type=submit>Renew</button></form>",
        ])

    def _page(
        self,
        start_response: Callable[..., Any],
        account: Account,
        cert: CertIdentity,
        status: int,
        *,
        error: str = "",
        notice: str = "",
        head: bool = False,
        following: str = "",
        done: bool = False,
    ) -> list[bytes]:
        """The page: who is signed in, the two-factor session, and its form.

        ``following``: the ``next`` path asked for (any text; only a same-origin path,
        browser_pages.safe_next, is used). It rides in the form, and once a session is
        open (``done``, or one already is) the page links to it."""
        e = html.escape
        now = self.clock()
        grant = self.auth.current_grant(account, cert, now)
        token = self._token(cert)
        href = safe_next(following)
        name = cert.common_name or cert.subject
        parts = [
            "<h1>Two-factor sign-in</h1>",
            f'<p class="err">{e(error)}</p>' if error else "",
            f'<p class="ok">{e(notice)}</p>' if notice else "",
        ]
        if grant is not None and href is not None:
            # The path shown as a path (in <code>, after what it is), never read as a sentence.
            place = f'the {"folder" if following.endswith("/") else "file"} <code>{e(following)}</code>'
            parts.append(f'<p><a class=button href="{e(href)}">Continue to {place}</a></p>'
                         if done else f'<p><a href="{e(href)}">Back to {place}</a></p>')
        parts += [
            "<dl>",
            f"<dt>Account</dt><dd>{e(account.name)}</dd>",
            f"<dt>Certificate</dt><dd>{e(name)}<details><summary>Certificate details</summary>"
            f"Subject {e(cert.subject)}<br>Issued by {e(cert.issuer)}<br>Serial {e(cert.serial)}</details></dd>",
            f"<dt>Expires</dt><dd>{time_html(cert.not_after.timestamp())} "
            f"(in {max(0, int(days_left(cert, now)))} days)</dd>",
        ]
        hidden_next = f'<input type=hidden name=next value="{e(following)}">' if href is not None else ""
        if grant is not None:
            parts += [
                f"<dt>Two-factor session</dt><dd>open until {time_html(grant.idle_until)} if unused, "
                f"at the latest {time_html(grant.expires)}</dd></dl>",
                "<p>Every program that uses this certificate (this browser, a mapped drive, a sync app) "
                "can now open folders that need a code with your password alone.</p>",
                f'<form method=post action="/{PREFIX}/end"><input type=hidden name=csrf value="{e(token)}">',
                "<button type=submit class=quiet>End the two-factor session now</button></form>",
            ]
        else:
            parts += [
                "<dt>Two-factor session</dt><dd>none</dd></dl>",
                "<p>Some folders need a code from your authenticator app as well as your password. "
                "Enter both here once; then your password alone opens them for a while.</p>",
                f'<form method=post action="/{PREFIX}/stepup" autocomplete=off>',
                f'<input type=hidden name=csrf value="{e(token)}">{hidden_next}',
                "<label for=password>Password</label>",
                "<input id=password name=password type=password required autocomplete=current-password>",
                "<label for=code>Code from your authenticator app (6 digits)</label>",
                "<input id=code name=code type=text inputmode=numeric pattern=[0-9]{6} maxlength=6 required "
                "autocomplete=one-time-code>",
                "<button type=submit>Verify</button></form>",
            ]
        parts.append(self._renewal_form(account, cert, token))
        parts.append('<p class=links><a href="/">All shares</a></p>')
        body = page_bytes("Two-factor sign-in", "".join(parts), scripts=(LOCAL_TIME_SCRIPT,))
        start_response(status_line(status), html_headers(body, scripts=(LOCAL_TIME_SCRIPT,)))
        return [b""] if head else [body]
