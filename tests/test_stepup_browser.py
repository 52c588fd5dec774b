"""Which requests to ``/_davserver/renew`` are a browser's: one decision, csrf.is_browser.

The renewal form of the step-up page is protected against cross-site request forgery
for browsers (a token bound to the certificate, csrf.py); scripts (curl, the documented
CSR flow) post without one. Whether a request is a browser's was decided twice, and
stepup.py's own test (Origin or Sec-Fetch-Site) missed a browser request carrying only
another Sec-Fetch header (``Sec-Fetch-Mode``, ``Sec-Fetch-Dest``): such a post without a
token reached the renewal.
"""

from __future__ import annotations

import pytest
import requests

from davserver.csrf import is_browser
from davserver.server import DavServer

from .conftest import Instance
from .test_enrolment_web import ALICE_PW, P12_PW, alice_cert, issued_count, renew, serving

#: Headers only a browser sends, one at a time (Fetch Metadata, W3C; Origin, RFC 6454).
BROWSER_ONLY = [{"Sec-Fetch-Mode": "navigate"}, {"Sec-Fetch-Dest": "document"}, {"Sec-Fetch-User": "?1"},
                {"Sec-Fetch-Site": "same-origin"}]


def renew_with(inst: Instance, server: DavServer, fields: dict[str, str], headers: dict[str, str]) -> requests.Response:
    """POST the renewal form with alice's certificate and ``headers`` (no CSRF token)."""
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(inst.ca_file)
        s.cert = alice_cert(inst)
        return s.post(f"{server.url}_davserver/renew", data=fields, headers={"Accept": "text/html", **headers},
                      timeout=30)


def test_a_post_with_any_browser_header_and_no_token_is_refused_and_a_script_is_not(inst: Instance) -> None:
    fields = {"password": ALICE_PW, "p12_password": P12_PW}
    with serving(inst, renew_before_days=400) as server:
        before = issued_count(inst)
        for headers in BROWSER_ONLY:
            environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}
            assert is_browser(environ), headers
            r = renew_with(inst, server, fields, headers)
            assert r.status_code == 403, (headers, r.status_code)
            assert issued_count(inst) == before, headers
        # The twin: a script (no browser header, no token) still renews.
        r = renew(inst, server, fields, alice_cert(inst))
        assert r.status_code == 200 and issued_count(inst) == before + 1


@pytest.mark.parametrize("headers", [{}, {"Accept": "text/html"}, {"User-Agent": "Mozilla/5.0"}])
def test_headers_a_script_may_send_do_not_make_it_a_browser(headers: dict[str, str]) -> None:
    assert not is_browser({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
