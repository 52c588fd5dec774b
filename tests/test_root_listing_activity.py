"""The root listing tells of a share that needs more factors than the request proved its
name and kind only: no quota figures, size, ETag, times or dead properties, which change
as the share is used (dav.py ``_ShareEntry.proven``). A request to the share itself, with
its factors, still gets them all. Real TLS requests on a real server."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pyotp

from davserver.server import DavServer

from .conftest import Client, Instance, session_for
from .test_destination_factors import live  # noqa: F401
from .test_totp_live import PW

#: The live properties that reveal activity.
ACTIVITY = ("quota-used-bytes", "quota-available-bytes", "getlastmodified", "getetag", "getcontentlength",
            "creationdate")
NAMED = ("<D:propfind xmlns:D='DAV:'><D:prop>" + "".join(f"<D:{n}/>" for n in ACTIVITY)
         + "<D:resourcetype/></D:prop></D:propfind>")


def _props(body: bytes, href: str) -> dict[str, str]:
    """{local name: status} of every property answered for ``href``."""
    found: dict[str, str] = {}
    for response in ET.fromstring(body).iter("{DAV:}response"):  # noqa: S314 - our own server
        if response.findtext("{DAV:}href") != href:
            continue
        for propstat in response.iter("{DAV:}propstat"):
            status = (propstat.findtext("{DAV:}status") or "").split()[1]
            for prop in propstat.iter("{DAV:}prop"):
                for element in prop:
                    found[element.tag.split("}")[1]] = status
    return found


def _shown(found: dict[str, str]) -> set[str]:
    return {n for n in ACTIVITY if found.get(n) == "200"}


def test_root_listing_shows_no_activity_of_a_share_needing_a_code(
        live: tuple[Instance, DavServer, Client, pyotp.TOTP]) -> None:  # noqa: F811
    inst, server, _granted, _totp = live
    (inst.home.root / "data" / "secure" / "secret.txt").write_bytes(b"secret")
    with session_for(inst, "alice", password=PW) as s:
        for body in (None, NAMED):  # allprop, then each property named
            r = s.request("PROPFIND", server.url, headers={"Depth": "1"}, data=body)
            assert r.status_code == 207, r.text
            secure = _props(r.content, "/secure/")
            assert secure and _shown(secure) == set(), secure
            assert secure.get("resourcetype") == "200"
            files = _props(r.content, "/files/")
            assert {"quota-used-bytes", "quota-available-bytes"} <= _shown(files), files  # the twin


def test_the_share_itself_shows_them_with_a_session(
        live: tuple[Instance, DavServer, Client, pyotp.TOTP]) -> None:  # noqa: F811
    inst, server, granted, _totp = live
    with session_for(inst, client=granted, password=PW) as s:
        r = s.request("PROPFIND", server.url + "secure/", headers={"Depth": "0"}, data=NAMED)
        assert r.status_code == 207, r.text
        assert {"quota-used-bytes", "quota-available-bytes", "getlastmodified"} <= _shown(
            _props(r.content, "/secure/")), r.text
