"""Content-Length is read by one function (framing.content_length / parse_content_length):
it accepts exactly 1 to 19 ASCII digits (RFC 9110 §8.6), whatever Python's int() and
str.isdigit() would take; http1.py frames with it; every module that reads the header
calls it and keeps its own answer to an invalid value; and a live request with a bad value
gets the same answer whichever module it is bound for."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from davserver import enrolment_pages, fastpath, fs, guard, limits, stepup
from davserver.framing import BadContentLength, content_length, has_body, parse_content_length
from davserver.http1 import FramingError, frame_request
from davserver.server import DavServer
from davserver.store import davstate

from .conftest import Instance
from .test_framing import AUTH, _audit_lines, _read_all, _tls

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"

#: Values some reader of the header took before: int() takes signs, spaces, underscores and
#: other scripts' digits; str.isdigit() takes those digits and superscripts.
BAD = ["+5", "-1", "1_0", "5 5", "0x5", "١٢", "²", "５", "5,5", "", "12345678901234567890", "1e3", "\u00a05"]


def _reference(value: str) -> int | None:
    """What RFC 9110 §8.6 allows, spelt out without a regular expression."""
    text = value.strip(" \t")
    if 1 <= len(text) <= 19 and all(c in "0123456789" for c in text):
        return int(text)
    return None


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789+-_ \t,.xeE١٢٣۴５²\u00a0\u0660")), max_size=25),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers(min_value=0, max_value=10**25).map(lambda n: f" {n}\t"),
))
@example("")
@example("0")
@example("00000000000000000001")
@example("9999999999999999999")
@example("10000000000000000000")
@example("١٢")
def test_exactly_ascii_digits_are_a_length(value: str) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(BadContentLength):
            parse_content_length(value)
    else:
        assert parse_content_length(value) == expected
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    if b"\t" in raw.strip(b" \t") or b"," in raw:
        return  # a list or a tab inside: http1.py's own question
    fields = [(b"Host", b"x"), (b"Content-Length", raw)]
    if expected is None:
        with pytest.raises(FramingError):
            frame_request(fields, http11=True)
    else:
        assert frame_request(fields, http11=True).length == expected


def test_no_content_length_is_no_length() -> None:
    assert content_length({}) is None
    assert content_length({"CONTENT_LENGTH": ""}) is None
    assert content_length({"CONTENT_LENGTH": "0"}) == 0
    assert not has_body({}) and not has_body({"CONTENT_LENGTH": "0"})
    assert has_body({"CONTENT_LENGTH": "+5"}) and has_body({"HTTP_TRANSFER_ENCODING": "chunked"})


def test_only_framing_reads_the_header() -> None:
    """No module parses CONTENT_LENGTH by itself any more."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "framing.py":
            continue
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "CONTENT_LENGTH" in line and re.search(r"int\(|isdigit|\.get\(", line):
                pytest.fail(f"{path.name}: {line.strip()}")


def _environ(value: str) -> dict[str, Any]:
    return {"CONTENT_LENGTH": value, "wsgi.input": io.BytesIO(b"<x/>" * 10), "REQUEST_METHOD": "PROPFIND"}


#: Each reader's answer to an invalid Content-Length, as before: (what is asked, the answer).
SITES = {
    "stepup form": (lambda e: stepup.StepUpPage._form(e), None),
    "limits XML cap": (lambda e: limits.Limits(lambda *a: [], xml_body_bytes=10)._cap_body(e), False),
    "enrolment form": (lambda e: enrolment_pages.read_form(e), 411),
    "fastpath PROPFIND body": (lambda e: fastpath._raw_body(e), None),
    "guard body announced": (lambda e: guard._has_body(e), True),
    "fs PUT length": (lambda e: fs._expected_length(e), None),
    "davstate LOCK owner": (lambda e: davstate._owner_look_ahead(e, davstate.LockBounds(owner_bytes=1)), None),
}


@pytest.mark.parametrize("value", ["+5", "١٢", "1_0", "5 5", "-1"])
@pytest.mark.parametrize("site", sorted(SITES))
def test_each_reader_keeps_its_answer_to_a_bad_value(site: str, value: str) -> None:
    ask, answer = SITES[site]
    assert ask(_environ(value)) == answer


@pytest.mark.parametrize("value", [b"+5", "١٢".encode(), b"1_0", b"5 5", b"-1", b"0x5", b"12345678901234567890"])
def test_a_live_bad_value_gets_one_answer_whatever_it_is_bound_for(inst: Instance, server: DavServer,
                                                                   value: bytes) -> None:
    """http1.py refuses it (400, bad_framing, closed) before the reader of any module runs:
    a PUT (fs.py), a PROPFIND (limits.py, fastpath.py), a LOCK (store/davstate.py), a GET
    (fastpath.py) and the step-up form (stepup.py) alike."""
    requests = {
        "PUT": "/files/new.txt", "PROPFIND": "/files/", "LOCK": "/files/lock.txt", "GET": "/ro/readme.txt",
        "POST": "/_davserver/step-up",
    }
    for method, path in requests.items():
        before = len(_audit_lines(inst))
        tls = _tls(inst, server)
        tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n".encode()
                    + b"Content-Length: " + value + b"\r\n\r\n<x/>")
        response, closed = _read_all(tls)
        tls.close()
        assert response.startswith(b"HTTP/1.1 400 ") and closed, (method, value, response[:80])
        time.sleep(0.05)
        lines = _audit_lines(inst)[before:]
        assert [(x["reason"], x["status"]) for x in lines] == [("bad_framing", 400)], (method, value, lines)
    assert not (inst.home.root / "data" / "files" / "new.txt").exists()
