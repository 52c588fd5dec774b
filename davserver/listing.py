"""The folder listing a browser sees: who is signed in, with which certificate
and factors, until when, and the folder's content with readable sizes and dates; a banner with a link to
renewal when the certificate expires within ``enrolment.renew_before_days``
(``RENEW_DUE_KEY``, set by the guard).

It replaces WsgiDAV's directory browser, which names its version and serves
its assets from an extra share outside our access rules.

Every name is shown through names.display_name (control characters and what
XML/HTML cannot carry become U+FFFD) and escaped; every link is the exact name,
percent-encoded. Names that are not UTF-8 are not listed (the share hides them).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from wsgidav.mw.base_mw import BaseMiddleware

from .auth.identity import CertIdentity
from .config import ShareConfig
from .content_safety import NO_STORE_HEADERS
from .names import display_name
from .renewal import RENEW_DUE_KEY
from .stepup import PREFIX as STEPUP_PREFIX
from .tls import CERT_ENVIRON_KEY

__all__ = ["MAY_WRITE_KEY", "Listing", "human_size"]

#: Set by the guard on GET and HEAD: whether access.decide allows this account a PUT
#: in the requested folder (the share is writable and the account one of its writers).
MAY_WRITE_KEY = "davserver.may_write"

_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.3rem;word-break:break-all}.who{background:#f3f5f8;padding:.6rem 1rem;font-size:.9rem}
.who a{margin-left:.5rem}table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #eee}td.n{text-align:right;white-space:nowrap}
th{font-weight:600;color:#555}.renew{background:#fff4ce;padding:.6rem 1rem}
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}
"""


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _text(value: str) -> str:
    """Text for HTML (content or a quoted attribute): shown as names.display_name, then escaped."""
    return html.escape(display_name(value))


def _when(stamp: float | None) -> str:
    if stamp is None:
        return ""
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Listing(BaseMiddleware):
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        provider = environ.get("wsgidav.provider")
        if method not in ("GET", "HEAD") or provider is None:
            return self.next_app(environ, start_response)
        path = environ["PATH_INFO"]
        root = getattr(provider, "root_folder_path", None)
        if root is not None and not os.path.isdir(os.path.join(root, path.lstrip("/"))):
            # A cheap look first: most GETs are files, which the share resolves (and confines) itself.
            return self.next_app(environ, start_response)
        res = provider.get_resource_inst(path, environ)
        if res is None or not res.is_collection:
            return self.next_app(environ, start_response)
        base = environ.get("SCRIPT_NAME", "") + path
        if not base.endswith("/"):
            location = quote(base + "/")
            # A 301 is cacheable by default (RFC 9110 §15.4.2), and the folder may become a file.
            start_response("301 Moved Permanently",
                           [("Location", location), ("Content-Length", "0"), *NO_STORE_HEADERS])
            return [b""]
        body = self._render(environ, res, base).encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *_HEADERS],
        )
        return [b""] if method == "HEAD" else [body]

    def _render(self, environ: dict[str, Any], res: Any, base: str) -> str:
        e = _text
        rows = []
        if base != "/":
            parent = base.rstrip("/").rsplit("/", 1)[0] + "/"
            rows.append(f'<tr><td><a href="{e(quote(parent))}">../</a></td><td></td><td></td></tr>')
        members = sorted(res.get_member_list(), key=lambda m: (not m.is_collection, m.name.lower()))
        for m in members:
            name = m.name + ("/" if m.is_collection else "")
            href = quote(base + name)
            size = "" if m.is_collection else human_size(m.get_content_length())
            rows.append(
                f'<tr><td><a href="{e(href)}">{e(name)}</a></td><td class=n>{e(size)}</td>'
                f"<td class=n>{e(_when(m.get_last_modified()))}</td></tr>"
            )
        if not members:
            rows.append("<tr><td colspan=3><em>This folder is empty.</em></td></tr>")
        return "".join(
            [
                "<!doctype html><html lang=en><head><meta charset=utf-8>",
                '<meta name=viewport content="width=device-width,initial-scale=1">',
                f"<title>{e(base)}</title><style>{_STYLE}</style></head><body>",
                f"<h1>Index of {e(base)}</h1>",
                self._who(environ),
                "<table><thead><tr><th>Name</th><th>Size</th><th>Modified</th></tr></thead><tbody>",
                *rows,
                "</tbody></table></body></html>",
            ]
        )

    @staticmethod
    def _who(environ: dict[str, Any]) -> str:
        e = _text
        cert: CertIdentity | None = environ.get(CERT_ENVIRON_KEY)
        account = environ.get("davserver.account", "")
        factors = ("certificate", *environ.get("davserver.factors", ()))
        parts = [f"Signed in as <b>{e(account)}</b>"]
        if cert is not None:
            parts.append(f"with certificate {e(cert.subject)} (serial {e(cert.serial)})")
        parts.append(f"· factors: {e(', '.join(factors))}")
        grant = environ.get("davserver.grant_expires")
        if grant:
            parts.append(f"· two-factor grant until {e(_when(grant))}")
        share: ShareConfig | None = environ.get("davserver.share")
        if share is not None and "totp" in share.require or environ.get("davserver.totp_enrolled"):
            parts.append(f'<a href="/{STEPUP_PREFIX}/">two-factor sign-in</a>')
        banner = ""
        if environ.get(RENEW_DUE_KEY) and cert is not None:
            banner = (
                f'<p class=renew>Your certificate expires on {e(cert.not_after.strftime("%Y-%m-%d"))}. '
                f'<a href="/{STEPUP_PREFIX}/#renew">Renew it now</a> so you are not locked out.</p>'
            )
        return f'<p class=who>{" ".join(parts)}</p>{banner}'
