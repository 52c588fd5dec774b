"""RFC 4331 quota properties of ``/`` and the share entries listed in it: integers, never empty.

A drive mapped at ``https://host:port/`` (Windows, Finder) reads its free space from
``/``; WsgiDAV answered the properties there with 200 and an empty value.
"""

from __future__ import annotations

import shutil

import pytest

from davserver.server import DavServer

from .conftest import Instance, session_for
from .test_fastpath import parse, props_body, wsgidav_only

QUOTA = ["quota-available-bytes", "quota-used-bytes"]
#: Free space moves while the test runs (other processes write to the same disk).
SLACK = 256 << 20


def _figures(props: dict[str, tuple[str, str]]) -> tuple[int, int]:
    for name in QUOTA:
        status, value = props[name]
        assert status == "200", (name, props[name])
        assert value.isdigit(), (name, value)  # an integer (RFC 4331 §3, §4), never empty
    return int(props["quota-used-bytes"][1]), int(props["quota-available-bytes"][1])


def _close(got: tuple[int, int], want: tuple[int, int]) -> None:
    assert abs(got[0] - want[0]) <= SLACK and abs(got[1] - want[1]) <= SLACK, (got, want)


@pytest.mark.parametrize("body", [props_body(QUOTA), None], ids=["named", "allprop"])
def test_root_and_share_entries_report_integer_quota(inst: Instance, server: DavServer, body: bytes | None) -> None:
    s = session_for(inst)
    r = s.request("PROPFIND", server.url, headers={"Depth": "1"}, data=body)
    assert r.status_code == 207
    got = parse(r.text)
    # alice sees files, ro and team; each entry carries its folder's filesystem's figures
    assert set(got) == {"/", "/files/", "/ro/", "/team/"}
    entries = {}
    for share in ("files", "ro", "team"):
        du = shutil.disk_usage(inst.home.root / "data" / share)
        entries[share] = _figures(got[f"/{share}/"])
        _close(entries[share], (du.used, du.free))
    # "/" reports the visible share with the least space available
    _close(_figures(got["/"]), min(entries.values(), key=lambda f: f[1]))
    depth0 = parse(s.request("PROPFIND", server.url, headers={"Depth": "0"}, data=props_body(QUOTA)).text)
    _close(_figures(depth0["/"]), _figures(got["/"]))


def test_share_root_quota_agrees_on_both_propfind_paths(inst: Instance, server: DavServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The share itself (its provider) answers the same figures as its entry in ``/``."""
    s = session_for(inst)
    entry = _figures(parse(s.request("PROPFIND", server.url + "files", headers={"Depth": "0"},
                                     data=props_body(QUOTA)).text)["/files/"])
    fast = _figures(parse(s.request("PROPFIND", server.url + "files/", headers={"Depth": "0"},
                                    data=props_body(QUOTA)).text)["/files/"])
    with wsgidav_only(monkeypatch):
        full = _figures(parse(s.request("PROPFIND", server.url + "files/", headers={"Depth": "0"},
                                        data=props_body(QUOTA)).text)["/files/"])
    _close(fast, entry)
    _close(full, entry)


def test_a_share_without_its_folder_reports_no_quota_rather_than_an_empty_one(inst: Instance,
                                                                               server: DavServer) -> None:
    """RFC 4331: an integer, or the property not found; never 200 with an empty value."""
    shutil.rmtree(inst.home.root / "data/ro")
    s = session_for(inst)
    got = parse(s.request("PROPFIND", server.url, headers={"Depth": "1"}, data=props_body(QUOTA)).text)
    for name in QUOTA:
        assert got["/ro/"][name] == ("404", ""), got["/ro/"]
    _figures(got["/files/"])  # the twin: a share whose folder exists still reports figures
    _figures(got["/"])  # and "/" reports the shares that can be read
