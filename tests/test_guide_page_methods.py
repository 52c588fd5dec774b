"""The two-factor guide page is a 403 without a Basic challenge only for a GET or HEAD
navigation (guard.py ``_NAVIGATIONS``): a WebDAV client that asks for HTML first (KIO,
Dolphin: ``Accept: text/html, ...``) keeps the 401 with ``WWW-Authenticate`` on PROPFIND,
PUT and every other method, or it could never sign in. Real TLS requests."""

from __future__ import annotations

import pyotp
import pytest

from davserver.server import DavServer

from .conftest import Instance, session_for
from .test_totp_live import PW, live  # noqa: F401

#: What KIO sends (kio/src/kioworkers/http/http.cpp DEFAULT_ACCEPT_HEADER).
KIO_ACCEPT = "text/html, text/plain, text/*, image/png, image/*, */*"
HEADERS = ({"Accept": KIO_ACCEPT}, {"Accept": "text/html"}, {"Sec-Fetch-Dest": "document"})


@pytest.mark.parametrize("password", [PW, None])
def test_webdav_methods_keep_the_challenge(live: tuple[Instance, DavServer, pyotp.TOTP],  # noqa: F811
                                           password: str | None) -> None:
    inst, server, _ = live
    with session_for(inst, "alice", password=password) as s:
        if password is None:
            s.auth = None
        for headers in HEADERS:
            for method, path, body in (("PROPFIND", "secure/", None), ("PUT", "secure/new.txt", b"x"),
                                       ("MKCOL", "secure/dir/", None), ("DELETE", "secure/gone.txt", None)):
                r = s.request(method, server.url + path, headers={**headers, "Depth": "0"}, data=body)
                assert r.status_code == 401, (method, headers, r.status_code)
                assert r.headers.get("WWW-Authenticate", "").startswith("Basic "), (method, headers)
    assert not (inst.home.root / "data" / "secure" / "new.txt").exists()


@pytest.mark.parametrize("password", [PW, None])
def test_a_navigation_gets_the_guide_without_a_challenge(live: tuple[Instance, DavServer, pyotp.TOTP],  # noqa: F811
                                                         password: str | None) -> None:
    """The twin: GET and HEAD navigations still get the guide, 403 without a dialog."""
    inst, server, _ = live
    with session_for(inst, "alice", password=password) as s:
        if password is None:
            s.auth = None
        for headers in HEADERS:
            for method in ("GET", "HEAD"):
                r = s.request(method, server.url + "secure/", headers=headers)
                assert r.status_code == 403, (method, headers, r.status_code)
                assert "WWW-Authenticate" not in r.headers, (method, headers)
            assert "code" in s.get(server.url + "secure/", headers=headers).text.lower()
