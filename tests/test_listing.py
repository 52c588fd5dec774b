"""What a browser shows: the folder listing with who is signed in, readable sizes, and no server details."""

from __future__ import annotations

import re

from davserver.listing import human_size
from davserver.server import DavServer

from .conftest import Instance, session_for


def test_listing_shows_the_signed_in_identity_and_readable_entries(inst: Instance, server: DavServer) -> None:
    files = inst.home.root / "data/files"
    (files / "sub dir").mkdir()
    (files / "report <1>.txt").write_bytes(b"x" * 5000)
    s = session_for(inst)
    r = s.get(server.url + "files/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "Signed in as <b>alice</b>" in r.text
    assert "CN=alice" in r.text and inst.clients["alice"].issued.serial in r.text
    assert "You signed in with this certificate and your password." in r.text
    assert 'href="/files/sub%20dir/"' in r.text
    assert "report &lt;1&gt;.txt" in r.text, "names are escaped"
    assert "4.9 KiB" in r.text and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", r.text)
    assert r.headers["Cache-Control"] == "no-store" and "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "WsgiDAV" not in r.text and str(inst.home.root) not in r.text
    assert s.get(server.url + "files/report%20%3C1%3E.txt").content == b"x" * 5000, "the link downloads"


def test_listing_redirects_to_the_slash_and_lists_only_visible_shares(inst: Instance, server: DavServer) -> None:
    s = session_for(inst, "carol")
    r = s.get(server.url + "files", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "/files/"
    root = s.get(server.url).text
    assert 'href="/files/"' in root and 'href="/ro/"' in root and "/team/" not in root


def test_listing_needs_the_same_credentials(inst: Instance, server: DavServer) -> None:
    assert session_for(inst, password="wrong-password").get(server.url + "files/").status_code == 401
    s = session_for(inst)
    # no asset share from the library: a name that is no share answers like a share one may not read
    assert s.get(server.url + ":dir_browser/style.css").status_code == 401, "no asset share from the library"


def test_human_sizes() -> None:
    assert [human_size(n) for n in (None, 0, 1023, 1024, 5 << 20, 3 << 30)] == ["", "0 B", "1023 B", "1.0 KiB",
                                                                                "5.0 MiB", "3.0 GiB"]
