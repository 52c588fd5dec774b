"""The layers of a request share one typed context (davserver/request_context.py).

Proves: the guard creates the context once per request and every later layer (fs.py,
copymove.py, listing.py) sees that same object; a COPY's Destination is parsed once, by
the guard, and read from the context afterwards; no module passes another a value under
a ``"davserver."`` string key in the WSGI environ (the scan below), except the context's
own key and the one upstream boundary (tls.CERT_ENVIRON_KEY in the connection's ssl_env,
which cheroot copies into the request's environ)."""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import davserver.copymove
import davserver.fs
import davserver.guard
import davserver.limits
import davserver.listing
from davserver import request_context as rc
from davserver.request_context import CONTEXT_KEY, RequestContext, begin, request_context
from davserver.target import Target
from davserver.tls import CERT_ENVIRON_KEY

from .conftest import Instance, running, session_for

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"

#: Where a "davserver." key may be defined and used: the context's own key, and the one
#: upstream boundary (tls.py puts the certificate in the connection's ssl_env).
_ALLOWED_CONSTANTS = {("request_context.py", "CONTEXT_KEY"), ("tls.py", "CERT_ENVIRON_KEY")}
#: Calls that read or write a mapping by key (an environ's .get, .setdefault, .pop).
_KEY_CALLS = {"get", "setdefault", "pop"}


def _is_key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("davserver.")


def environ_key_uses(source: str, filename: str) -> list[str]:
    """Every place ``source`` defines or uses a ``"davserver."`` mapping key: a module
    constant holding one (``FOO_KEY = "davserver.foo"``; allowed: :data:`_ALLOWED_CONSTANTS`
    and a private ``_NAME`` no other module names), or a literal one as a subscript, as
    the key of ``.get``/``.setdefault``/``.pop`` or left of ``in``. As ``file:line what``."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_key(node.value):
            for name in (t.id for t in node.targets if isinstance(t, ast.Name)):
                if (filename, name) not in _ALLOWED_CONSTANTS and not name.startswith("_"):
                    found.append(f"{filename}:{node.lineno} shared key constant {name}")
        elif isinstance(node, ast.Subscript) and _is_key(node.slice):
            found.append(f"{filename}:{node.lineno} environ[...] with a literal davserver. key")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _KEY_CALLS
              and node.args and _is_key(node.args[0])):
            found.append(f"{filename}:{node.lineno} .{node.func.attr}(...) with a literal davserver. key")
        elif isinstance(node, ast.Compare) and _is_key(node.left) and isinstance(node.ops[0], ast.In | ast.NotIn):
            found.append(f"{filename}:{node.lineno} 'in' with a literal davserver. key")
    return found


def _private_constants(source: str) -> set[str]:
    tree = ast.parse(source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) and _is_key(node.value)
            for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("_")}


def _sources() -> dict[str, str]:
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_passes_values_under_davserver_environ_keys() -> None:
    sources = _sources()
    found = [hit for name, text in sources.items() if name != "request_context.py"
             for hit in environ_key_uses(text, name)]
    assert not found, "use a field of request_context.RequestContext instead:\n" + "\n".join(found)
    # A module's private key stays private: no other module names it.
    for name, text in sources.items():
        for constant in _private_constants(text):
            others = [other for other, t in sources.items() if other != name and constant in t]
            assert not others, f"{name}'s private key {constant} is named in {others}"


def test_the_certificate_key_is_read_from_the_connection_only() -> None:
    """Outside tls.py (which writes it) and request_context.py (which moves it into the
    context), the boundary key is read only from a connection's ``ssl_env``, before any
    request exists (http1.py's framing refusal, server.py's handshake check)."""
    for name, text in _sources().items():
        if name in ("tls.py", "request_context.py"):
            continue
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "CERT_ENVIRON_KEY" and isinstance(node.ctx, ast.Load):
                line = text.splitlines()[node.lineno - 1]
                assert "ssl_env" in line and ".get(CERT_ENVIRON_KEY)" in line, f"{name}:{node.lineno}: {line}"


def test_the_scan_catches_what_is_wrong() -> None:
    """The twin of the scan: each way of sharing a string key is caught, the allowed ones are not."""
    bad = "\n".join([
        'SHARED_KEY = "davserver.shared"',
        'def f(environ):',
        '    environ["davserver.x"] = 1',
        '    environ.get("davserver.y")',
        '    environ.setdefault("davserver.z", 2)',
        '    return "davserver.w" in environ',
    ])
    assert len(environ_key_uses(bad, "bad.py")) == 5
    assert not environ_key_uses('_MINE = "davserver.mine"\nlog = getLogger("davserver.x")\n', "ok.py")
    assert not environ_key_uses('CERT_ENVIRON_KEY = "davserver.cert"\n', "tls.py")
    assert environ_key_uses('CERT_ENVIRON_KEY = "davserver.cert"\n', "fs.py")


def test_begin_moves_the_certificate_once_and_the_accessor_returns_the_same_object() -> None:
    cert = object()
    environ: dict[str, Any] = {CERT_ENVIRON_KEY: cert}
    context = begin(environ)
    assert environ[CONTEXT_KEY] is context and context.cert is cert
    assert request_context(environ) is context and request_context(environ) is context
    bare: dict[str, Any] = {}
    made = request_context(bare)  # a layer run without the guard (a unit test) gets one, kept
    assert made is request_context(bare) and made.cert is None and made.refusal is None
    assert made.refuse_first("a") and not made.refuse_first("b") and made.refusal == "a"
    made.refuse("c")
    assert made.refusal == "c"


def _recording(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
               seen: list[tuple[str, Any]], label: str) -> None:
    real: Callable[..., Any] = getattr(module, name)
    lock = threading.Lock()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        with lock:
            seen.append((label, result))
        return result

    monkeypatch.setattr(module, name, wrapper)


def test_one_context_and_one_destination_parse_per_request(inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a live server: a COPY creates one context, parses its Destination once,
    and fs.py and copymove.py read that very context (and its parsed Destination); a GET
    of a folder is listed from the same context the guard filled in."""
    seen: list[tuple[str, Any]] = []
    _recording(monkeypatch, davserver.guard, "begin", seen, "begin")
    _recording(monkeypatch, davserver.guard, "parse_destination", seen, "parse")
    for module in (davserver.fs, davserver.copymove, davserver.listing):
        _recording(monkeypatch, module, "request_context", seen, module.__name__)
    with running(inst) as server:
        s = session_for(inst, "alice")
        assert s.put(server.url + "files/ctx-a.txt", data=b"hello").status_code in (201, 204)
        seen.clear()
        r = s.request("COPY", server.url + "files/ctx-a.txt", headers={"Destination": "/files/ctx-b.txt"})
        assert r.status_code == 201, r.text
        copy_seen = list(seen)
        seen.clear()
        r = s.get(server.url + "files/", headers={"Accept": "text/html"})
        assert r.status_code == 200 and "ctx-b.txt" in r.text
        get_seen = list(seen)
    created = [obj for label, obj in copy_seen if label == "begin"]
    parsed = [obj for label, obj in copy_seen if label == "parse"]
    assert len(created) == 1 and len(parsed) == 1, copy_seen
    context = created[0]
    assert isinstance(context, RequestContext) and isinstance(parsed[0], Target)
    readers = {label for label, _ in copy_seen} - {"begin", "parse"}
    assert {"davserver.fs", "davserver.copymove"} <= readers, copy_seen
    assert all(obj is context for label, obj in copy_seen if label in readers)
    assert context.destination == parsed[0] and context.destination.path == "/files/ctx-b.txt"
    assert context.account == "alice" and context.cert is not None and context.refusal is None
    assert [label for label, _ in get_seen].count("begin") == 1
    get_context = next(obj for label, obj in get_seen if label == "begin")
    assert get_context is not context
    assert any(label == "davserver.listing" for label, _ in get_seen), get_seen
    assert all(obj is get_context for label, obj in get_seen if label != "begin")
    assert get_context.may_write and get_context.csrf is not None and "files" in get_context.visible_shares
    assert rc.CONTEXT_KEY == "davserver.request"


def test_the_request_target_is_parsed_once_and_read_by_the_limits_layer(
        inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PROPFIND with Depth infinity on a file goes through limits.py's file check (Depth
    infinity of a file becomes Depth 0): the target it looks at is the guard's parse, from
    the context; no target parser runs after the guard's one."""
    seen: list[tuple[str, Any]] = []
    for name in ("parse_request_target", "parse_wsgi_path"):
        _recording(monkeypatch, davserver.guard, name, seen, name)
        if hasattr(davserver.limits, name):
            _recording(monkeypatch, davserver.limits, name, seen, "limits." + name)
    with running(inst) as server:
        s = session_for(inst, "alice")
        assert s.put(server.url + "files/ctx-depth.txt", data=b"x").status_code in (201, 204)
        seen.clear()
        r = s.request("PROPFIND", server.url + "files/ctx-depth.txt", headers={"Depth": "infinity"})
        assert r.status_code == 207, r.text
        assert "ctx-depth.txt" in r.text
        propfind_seen = list(seen)
        seen.clear()
        r = s.request("PROPFIND", server.url + "files/", headers={"Depth": "infinity"})
        assert r.status_code == 403 and "propfind-finite-depth" in r.text  # a folder: still refused
    assert [label for label, _ in propfind_seen] in (["parse_request_target"], ["parse_wsgi_path"]), propfind_seen
