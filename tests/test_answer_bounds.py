"""PROPFIND answers and lock owners are bounded before anything is built or stored.

- ``properties.max_propfind_names``: a PROPFIND asking for more names is refused (507,
  ``propfind_names_exceeded``) before any is looked up.
- ``properties.max_propfind_bytes`` bounds the whole answer, estimated before it is built
  as (members + 1) x (every asked-for name + per-entry overhead) + dead property bytes +
  lockdiscovery (fastpath.check_propfind), on the short path and on WsgiDAV's.
- ``locks.max_owner_bytes``: a LOCK whose ``<D:owner>`` is larger is refused (507,
  ``lock_owner_too_large``) and stores nothing, on SQLite and on a real redis-server.

Each refusal runs with the attacker's exact input (60,000 undefined names against a
folder of 200 files; 150 shared LOCKs with 1 MB owners) and has a twin showing what
clients really send (Windows', Finder's PROPFIND, allprop, a LOCK with an owner href)
still works.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import yaml

from davserver.store.davstate import LockBounds, StateLimitExceeded

from .conftest import Instance, running, server_process, session_for
from .test_dav_state import new_lock
from .test_early_body import rss_mib
from .test_fastpath import wsgidav_only
from .test_state_bounds import XML, audit_reasons, backend, live, locks_of, state_bytes  # noqa: F401 - fixtures

ATTACK_NAMES = 60_000
ATTACK_MEMBERS = 200


def names_body(count: int, *, include: bool = False) -> bytes:
    """A propfind naming `count` undefined properties ``x:p00000``…: 660 KB for 60,000."""
    names = "".join(f"<x:p{i:05d}/>" for i in range(count))
    inner = f"<D:allprop/><D:include>{names}</D:include>" if include else f"<D:prop>{names}</D:prop>"
    head = '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:x="urn:x">'
    return f"{head}{inner}</D:propfind>".encode()


#: Windows' MiniRedir listing a folder (captured), Finder's, and allprop.
WINDOWS = (b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop>'
           b"<D:name/><D:parentname/><D:href/><D:ishidden/><D:isreadonly/><D:getcontenttype/>"
           b"<D:contentclass/><D:getcontentlanguage/><D:creationdate/><D:lastaccessed/><D:getlastmodified/>"
           b"<D:getcontentlength/><D:iscollection/><D:isstructureddocument/><D:defaultdocument/>"
           b"<D:displayname/><D:isroot/><D:resourcetype/></D:prop></D:propfind>")
FINDER = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop xmlns:A="http://apple.com/ns/"'
          b' xmlns:M="urn:schemas-microsoft-com:"><D:getlastmodified/><D:getcontentlength/><D:creationdate/>'
          b"<D:resourcetype/><D:quota-available-bytes/><D:quota-used-bytes/><D:getetag/><A:appledoubleheader/>"
          b"<M:Win32FileAttributes/></D:prop></D:propfind>")
ALLPROP = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
CLIENTS = {"windows": WINDOWS, "finder": FINDER, "allprop": ALLPROP, "none": b""}


def configure(inst: Instance, **sections: dict[str, Any]) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def folder_of(inst: Instance, name: str, members: int) -> None:
    folder = inst.home.root / "data/files" / name
    folder.mkdir(parents=True)
    for i in range(members):
        (folder / f"file-{i:04d}.txt").write_bytes(b"x" * 100)


def propfind(s: requests.Session, url: str, body: bytes, depth: str = "1") -> requests.Response:
    return s.request("PROPFIND", url, data=body or None, headers={**XML, "Depth": depth})


# --- 1. PROPFIND: the number of names and the estimated answer -------------------------------------


def test_the_issues_60000_names_are_refused_in_the_server_process_without_growing_it(inst: Instance) -> None:
    folder_of(inst, "amp", ATTACK_MEMBERS)
    body = names_body(ATTACK_NAMES)
    assert 600_000 < len(body) < 1 << 20  # under the XML cap: the body itself is accepted
    with server_process(inst) as (proc, url):
        bob = session_for(inst, "bob")  # any reader
        assert propfind(bob, f"{url}files/amp/", WINDOWS).status_code == 207
        before = rss_mib(proc.pid)
        started = time.monotonic()
        for _ in range(4):
            r = propfind(bob, f"{url}files/amp/", body)
            assert r.status_code == 507, r.status_code
            assert b"propfind-names-exceeded" in r.content and len(r.content) < 4096
        elapsed = time.monotonic() - started
        growth = rss_mib(proc.pid) - before
        assert audit_reasons(inst, "PROPFIND")[-4:] == ["propfind_names_exceeded"] * 4
        assert growth < 16, f"server RSS grew {growth:.0f} MiB (before: +626 MiB)"
        assert elapsed < 10, f"{elapsed:.1f} s for four (before: 31 s for one)"
        assert propfind(bob, f"{url}files/amp/", FINDER).status_code == 207


def test_the_issues_names_past_a_raised_name_cap_meet_the_answer_bound(inst: Instance) -> None:
    """With the name cap lifted, the size estimate refuses the same request (325 MB before)."""
    folder_of(inst, "amp", ATTACK_MEMBERS)
    configure(inst, properties={"max_propfind_names": 100_000})
    with server_process(inst) as (proc, url):
        bob = session_for(inst, "bob")
        before = rss_mib(proc.pid)
        r = propfind(bob, f"{url}files/amp/", names_body(ATTACK_NAMES))
        assert r.status_code == 507 and b"answer-too-large" in r.content
        assert audit_reasons(inst, "PROPFIND")[-1] == "answer_too_large"
        growth = rss_mib(proc.pid) - before  # the 60,000-element parse itself, nothing built
        assert growth < 64, f"server RSS grew {growth:.0f} MiB (before: +626 MiB)"
        # Depth 0 of one file with the same names: 60,000 × 25 bytes, 1.5 MB, fits
        r = propfind(bob, f"{url}files/amp/file-0000.txt", names_body(ATTACK_NAMES), depth="0")
        assert r.status_code == 207 and r.content.count(b"<X:p") == ATTACK_NAMES


@pytest.mark.parametrize("short", [True, False], ids=["short-path", "wsgidav"])
def test_the_name_cap_is_the_bound_on_both_paths(inst: Instance, monkeypatch: pytest.MonkeyPatch,
                                                  short: bool) -> None:
    configure(inst, properties={"max_propfind_names": 40})
    folder_of(inst, "few", 3)
    with running(inst) as srv:
        bob = session_for(inst, "bob")
        ctx = monkeypatch.context() if short else wsgidav_only(monkeypatch)
        with ctx:
            for include in (False, True):
                for count, status in ((40, 207), (41, 507)):
                    r = propfind(bob, f"{srv.url}files/few/", names_body(count, include=include))
                    assert r.status_code == status, (include, count, r.status_code)
                    if status == 507:
                        assert audit_reasons(inst, "PROPFIND")[-1] == "propfind_names_exceeded"


@pytest.mark.parametrize("short", [True, False], ids=["short-path", "wsgidav"])
def test_no_answer_larger_than_the_bound_is_ever_sent(inst: Instance, monkeypatch: pytest.MonkeyPatch,
                                                      short: bool) -> None:
    """For every mix of members and names, on either path: a 207 is never over
    ``properties.max_propfind_bytes``, and a refusal is 507 ``answer_too_large``."""
    bound = 1 << 16
    configure(inst, properties={"max_propfind_bytes": bound, "max_propfind_names": 5000})
    sizes = (0, 1, 10, 60)
    for members in sizes:
        folder_of(inst, f"m{members}", members)
    with running(inst) as srv:
        bob = session_for(inst, "bob")
        ctx = monkeypatch.context() if short else wsgidav_only(monkeypatch)
        seen = set()
        with ctx:
            for members in sizes:
                for names in (1, 30, 100, 300, 1000, 3000):
                    for depth in ("0", "1"):
                        r = propfind(bob, f"{srv.url}files/m{members}/", names_body(names), depth=depth)
                        assert r.status_code in (207, 507), r.status_code
                        seen.add(r.status_code)
                        if r.status_code == 207:
                            assert len(r.content) <= bound, (members, names, depth, len(r.content))
                        else:
                            assert b"answer-too-large" in r.content
        assert seen == {207, 507}, "the loop crossed the bound"
        assert audit_reasons(inst, "PROPFIND")[-1] in ("answer_too_large", None, "ok")


@pytest.mark.parametrize("short", [True, False], ids=["short-path", "wsgidav"])
def test_clients_usual_propfinds_still_list_a_folder(inst: Instance, monkeypatch: pytest.MonkeyPatch,
                                                     short: bool) -> None:
    folder_of(inst, "amp", ATTACK_MEMBERS)
    with running(inst) as srv:
        bob = session_for(inst, "bob")
        with monkeypatch.context() if short else wsgidav_only(monkeypatch):
            for client, body in CLIENTS.items():
                r = propfind(bob, f"{srv.url}files/amp/", body)
                assert r.status_code == 207, (client, r.status_code)
                assert b"file-0199.txt" in r.content and b"file-0000.txt" in r.content, client


def test_a_streamed_listing_of_a_large_folder_still_works_and_is_bounded_too(inst: Instance) -> None:
    """Folders of more than 1,000 members are sent chunked; the estimate covers them whole."""
    folder_of(inst, "large", 2500)
    with running(inst) as srv:
        bob = session_for(inst, "bob")
        for body in (WINDOWS, ALLPROP):
            r = propfind(bob, f"{srv.url}files/large/", body)
            assert r.status_code == 207 and r.content.count(b"file-") >= 2500
    configure(inst, properties={"max_propfind_bytes": 1 << 20})  # 2,500 × allprop is over 1 MiB
    with running(inst) as srv:
        bob = session_for(inst, "bob")
        r = propfind(bob, f"{srv.url}files/large/", ALLPROP)
        assert r.status_code == 507 and b"answer-too-large" in r.content
        r = propfind(bob, f"{srv.url}files/large/", names_body(1))
        assert r.status_code == 207, "one undefined name over 2,500 members: 200 KB"


# --- 2. lock owners ------------------------------------------------------------------------------


def lock_body(owner: str, scope: str = "shared") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:{scope}/>'
            f"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>").encode()


@pytest.mark.parametrize("size", [0, 1, 100, 4095, 4096, 4097, 10_000, 1_000_000])
def test_every_lock_storage_refuses_an_owner_over_the_bound(backend: Any, size: int) -> None:  # noqa: F811
    """The storage's own check (for a lock that reaches it without the request look-ahead)."""
    locks = locks_of(backend.open(), LockBounds(owner_bytes=4096))
    lock = {**new_lock(), "owner": b"o" * size}
    if size <= 4096:
        assert locks.create("/files/a", lock)["owner"] == b"o" * size
    else:
        with pytest.raises(StateLimitExceeded) as exc:
            locks.create("/files/a", lock)
        assert exc.value.value == 507 and exc.value.reason == "lock_owner_too_large"
        assert locks.get_lock_list("/files/a", include_root=True, include_children=True, token_only=True) == []


def test_the_issues_150_locks_with_1_mb_owners_store_nothing(live: tuple[Instance, Any]) -> None:  # noqa: F811 - the fixture
    inst, redis = live
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        folder = f"{srv.url}files/owners/"
        assert alice.request("MKCOL", folder).status_code == 201
        alice.put(f"{folder}a.txt", data=b"x")
        before = state_bytes(inst, redis)
        big = lock_body("o" * 1_000_000)
        started = time.monotonic()
        for _ in range(150):
            r = alice.request("LOCK", f"{folder}a.txt", data=big, headers={**XML, "Depth": "0"})
            assert r.status_code == 507, r.status_code
            assert b"lock-owner-too-large" in r.content
        elapsed = time.monotonic() - started
        assert audit_reasons(inst, "LOCK")[-1] == "lock_owner_too_large"
        # a LOCK of a new name: refused before WsgiDAV creates its empty file
        r = alice.request("LOCK", f"{folder}new.txt", data=big, headers={**XML, "Depth": "0"})
        assert r.status_code == 507 and b"lock-owner-too-large" in r.content
        assert not (inst.home.root / "data/files/owners/new.txt").exists()
        growth = state_bytes(inst, redis) - before
        assert growth < 1 << 20, f"state grew {growth} bytes (before: 185 MB)"
        r = alice.request("PROPFIND", folder, headers={"Depth": "1"})
        assert r.status_code == 207 and len(r.content) < 64 << 10, len(r.content)
        assert elapsed < 60
        # the twin: a normal owner (an href, as Office and Finder send) is granted and shown
        owner = "<D:href>mailto:alice@example.org</D:href>"
        r = alice.request("LOCK", f"{folder}a.txt", data=lock_body(owner, "exclusive"),
                          headers={**XML, "Depth": "0"})
        assert r.status_code == 200, r.text
        token = r.headers["Lock-Token"]
        r = alice.request("PROPFIND", f"{folder}a.txt", data=None, headers={"Depth": "0"})
        assert b"mailto:alice@example.org" in r.content
        assert alice.request("UNLOCK", f"{folder}a.txt", headers={"Lock-Token": token}).status_code == 204


def test_the_owner_bound_is_the_setting(live: tuple[Instance, Any]) -> None:  # noqa: F811 - the fixture
    inst, _ = live
    configure(inst, locks={"max_owner_bytes": 1024})
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/bound.txt"
        alice.put(url, data=b"x")
        # stored as WsgiDAV serialises it: <ns0:owner xmlns:ns0="DAV:">TEXT</ns0:owner> (39 bytes + TEXT)
        fits = alice.request("LOCK", url, data=lock_body("a" * 900), headers={**XML, "Depth": "0"})
        assert fits.status_code == 200, fits.text
        over = alice.request("LOCK", url, data=lock_body("a" * 1100), headers={**XML, "Depth": "0"})
        assert over.status_code == 507 and b"lock-owner-too-large" in over.content
        assert audit_reasons(inst, "LOCK")[-1] == "lock_owner_too_large"


def test_lockdiscovery_counts_toward_the_answer_bound(live: tuple[Instance, Any]) -> None:  # noqa: F811 - the fixture
    inst, _ = live
    configure(inst, properties={"max_propfind_bytes": 1 << 16}, locks={"max_owner_bytes": 4096})
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        folder = f"{srv.url}files/held/"
        assert alice.request("MKCOL", folder).status_code == 201
        for i in range(20):  # 20 shared locks with 4 KB owners: 80 KB of lockdiscovery
            alice.put(f"{folder}f{i}", data=b"x")
            r = alice.request("LOCK", f"{folder}f{i}", data=lock_body("w" * 4000), headers={**XML, "Depth": "0"})
            assert r.status_code == 200, r.status_code
        r = propfind(alice, folder, ALLPROP)
        assert r.status_code == 507 and b"answer-too-large" in r.content
        assert audit_reasons(inst, "PROPFIND")[-1] == "answer_too_large"
        assert propfind(alice, folder, WINDOWS).status_code == 207, "no lockdiscovery asked for"
        assert propfind(alice, f"{folder}f0", ALLPROP, depth="0").status_code == 207
