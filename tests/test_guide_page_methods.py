"""The two-factor guide page is a 403 without a Basic challenge only for a GET or HEAD
navigation (guard.py ``_NAVIGATIONS``): a WebDAV client that asks for HTML first (KIO,
Dolphin: ``Accept: text/html, ...``) keeps the 401 with ``WWW-Authenticate`` on PROPFIND,
PUT and every other method, or it could never sign in. Real TLS requests."""

from __future__ import annotations

from collections.abc import Iterator

import pyotp
import pytest
import requests

from davserver.server import DavServer

from .conftest import Instance, session_for
from .test_totp_live import PW, live  # noqa: F401

#: What KIO sends (kio/src/kioworkers/http/http.cpp DEFAULT_ACCEPT_HEADER).
KIO_ACCEPT = "text/html, text/plain, text/*, image/png, image/*, */*"
HEADERS = ({"Accept": KIO_ACCEPT}, {"Accept": "text/html"}, {"Sec-Fetch-Dest": "document"})


@pytest.fixture(params=[PW, None], ids=["password", "no-credentials"])
def alice(request: pytest.FixtureRequest,
          live: tuple[Instance, DavServer, pyotp.TOTP]) -> Iterator[requests.Session]:  # noqa: F811
    """alice's session (her certificate) with the share's password, then with no Basic credentials at all."""
    password: str | None = request.param
    with session_for(live[0], "alice", password=password) as s:
        if password is None:
            s.auth = None
        yield s


def test_webdav_methods_keep_the_challenge(live: tuple[Instance, DavServer, pyotp.TOTP],  # noqa: F811
                                           alice: requests.Session) -> None:
    inst, server, _ = live
    for headers in HEADERS:
        for method, path, body in (("PROPFIND", "secure/", None), ("PUT", "secure/new.txt", b"x"),
                                   ("MKCOL", "secure/dir/", None), ("DELETE", "secure/gone.txt", None)):
            r = alice.request(method, server.url + path, headers={**headers, "Depth": "0"}, data=body)
            assert r.status_code == 401, (method, headers, r.status_code)
            assert r.headers.get("WWW-Authenticate", "").startswith("Basic "), (method, headers)
    assert not (inst.home.root / "data" / "secure" / "new.txt").exists()


def test_a_navigation_gets_the_guide_without_a_challenge(live: tuple[Instance, DavServer, pyotp.TOTP],  # noqa: F811
                                                         alice: requests.Session) -> None:
    """The twin: GET and HEAD navigations still get the guide, 403 without a dialog."""
    server = live[1]
    for headers in HEADERS:
        for method in ("GET", "HEAD"):
            r = alice.request(method, server.url + "secure/", headers=headers)
            assert r.status_code == 403, (method, headers, r.status_code)
            assert "WWW-Authenticate" not in r.headers, (method, headers)
        assert "code" in alice.get(server.url + "secure/", headers=headers).text.lower()
