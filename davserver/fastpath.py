"""Fast answers for the two requests clients make most: GET of a file, and
PROPFIND Depth 0/1 of a folder.

WsgiDAV answers them through layers that resolve the same path several
times (realpath + commonpath each), compute each property separately and
build the XML as an element tree: a 4 KiB GET and a PROPFIND of a
1,000-file folder cost many times what the work needs. Here a GET resolves
and opens the file once, and a PROPFIND lists the folder with one scandir
pass, fetches the members' dead properties in one store query, and writes
the multistatus directly, reusing each member's rendered answer while the
member is unchanged. Named properties and allprop (Windows Explorer's
listing) both take it, and so does a GET of one byte range (Finder reads
files in parallel ranges; ranges.py reads the header for both paths).
RFC 9110 preconditions are decided by conditions.py, as on WsgiDAV's path.
Anything else — the If header, If-Range, an unsatisfiable range,
propname, a lock to show in lockdiscovery, a stored property that does not
parse — goes to WsgiDAV unchanged, so behaviour is the same; the tests
compare the two answers, and the suites that run against WsgiDAV (litmus
among them) run against these paths too. Names are written as names.py says,
as on WsgiDAV's path: hrefs percent-encoded as hrefs.py says, ``displayname``
with U+FFFD for what XML cannot carry, names that are not UTF-8 left out.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import shutil
import stat
import threading
import xml.etree.ElementTree as XMLTree
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape

from defusedxml import ElementTree
from wsgidav import util

from .access import Refusal
from .conditions import Validators, entity_tag, evaluate, precondition_error
from .config import ShareConfig
from .framing import BadContentLength, content_length, has_body
from .hrefs import quote_href
from .names import display_name
from .oc_compat import CHECKSUMS, checksums_xml, stored_checksums
from .ranges import Unsatisfiable, resolve_range
from .sharefs import dav_error, etag, is_hidden, is_temp_name, served_kind
from .store.davstate import refuse
from .upstream import get_rfc1123_time

__all__ = ["LIVE_PROPS", "Share", "check_propfind", "fast_get", "fast_propfind"]

log = logging.getLogger("davserver.fastpath")

_BLOCK = 1 << 18


class Share(Protocol):
    """What the short paths ask of a share's provider: fs.Share, named by its shape
    so that this module does not import fs.py (which imports this one). The share facts
    both paths need (names hidden, kinds served, ETags, errno statuses) are sharefs.py's."""

    share: ShareConfig
    share_path: str
    mount_path: str
    lock_manager: Any
    prop_manager: Any
    checksums: bool

    def _check_realm(self, environ: dict[str, Any]) -> None:
        """Raise DAVError 403 when the request was authorised for another share."""

    def _loc_to_file_path(self, path: str, environ: dict[str, Any] | None = None) -> str:
        """The confined file path of share path ``path``; raises DAVError (400, 403, ...)."""
        raise NotImplementedError


#: Live properties answered from one stat per member.
LIVE_PROPS = frozenset(
    {"resourcetype", "getcontentlength", "getlastmodified", "getetag", "creationdate", "displayname",
     "getcontenttype"}
)
#: Left to WsgiDAV: the If header needs the lock manager; If-Range is evaluated there.
#: The RFC 9110 preconditions are decided here, by conditions.evaluate, as on its path.
_CONDITIONAL = ("HTTP_IF", "HTTP_IF_RANGE")
_PRECONDITIONS = ("HTTP_IF", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                  "HTTP_IF_UNMODIFIED_SINCE")


def _file_body(fd: int, first: int = 0, size: int | None = None) -> Iterator[bytes]:
    """The file's bytes from ``first``: ``size`` of them, or all to the end when None."""
    with os.fdopen(fd, "rb", buffering=0) as f:
        if size is None:
            while chunk := f.read(_BLOCK):
                yield chunk
            return
        f.seek(first)
        while size > 0 and (chunk := f.read(min(_BLOCK, size))):
            size -= len(chunk)
            yield chunk


def fast_get(provider: Share, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """A plain GET/HEAD of a regular file, whole or one satisfiable byte range (206, the
    Range already made canonical by ranges.normalise_range), or None to let WsgiDAV answer."""
    if any(key in environ for key in _CONDITIONAL) or has_body(environ):
        return None
    path = environ["PATH_INFO"]
    if path.endswith("/") or any(is_temp_name(part) for part in path.split("/")):
        return None
    provider._check_realm(environ)
    file_path = provider._loc_to_file_path(path, environ)  # confinement (realpath) once
    try:
        fd = os.open(file_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # missing, a symlink, a folder …: WsgiDAV gives the precise answer
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        return None
    # Preconditions come before Range (RFC 9110 §13.2.2), decided as on WsgiDAV's path.
    current = Validators(etag(st), st.st_mtime_ns // 1_000_000_000)
    outcome = evaluate(environ["REQUEST_METHOD"], environ, current)
    if outcome is not None:
        os.close(fd)
        raise precondition_error(outcome, current)
    # A Range was read once, as ranges.py says (Share.custom_request_handler left one
    # canonical range or none); an unsatisfiable one is WsgiDAV's 416, with its error body.
    part = resolve_range(environ["HTTP_RANGE"], st.st_size) if "HTTP_RANGE" in environ else None
    if isinstance(part, Unsatisfiable):
        os.close(fd)
        return None
    headers = [
        ("Content-Length", str(st.st_size if part is None else part.size)),
        ("Last-Modified", get_rfc1123_time(st.st_mtime)),
        ("Content-Type", util.guess_mime_type(path, environ["wsgidav.config"])),
        ("Date", get_rfc1123_time()),
        ("ETag", entity_tag(etag(st))),
        ("Accept-Ranges", "bytes"),
    ]
    if part is not None:
        headers.append(("Content-Range", part.content_range))
    start_response("200 OK" if part is None else "206 Partial Content", headers)
    if environ["REQUEST_METHOD"] == "HEAD":
        os.close(fd)
        return [b""]
    return _file_body(fd) if part is None else _file_body(fd, part.first, part.size)


def _requested_props(environ: dict[str, Any]) -> tuple[str, ...] | None:
    """The property names asked for in Clark notation, () for allprop, or None when
    the request needs WsgiDAV (propname, allprop with include, malformed XML)."""
    parsed, root = _propfind_body(environ)
    if not parsed:
        return None
    if root is None:
        return ()  # no body: allprop
    if root.tag != "{DAV:}propfind" or len(root) != 1:
        return None
    if root[0].tag == "{DAV:}allprop" and not len(root[0]):
        return ()
    if root[0].tag != "{DAV:}prop" or not len(root[0]):
        return None
    names: list[str] = []
    for el in root[0]:
        if len(el) or not el.tag.startswith("{") or el.tag in names:
            return None
        names.append(el.tag)
    return tuple(names)


_BODY_KEY = "davserver.propfind_body"


def _propfind_body(environ: dict[str, Any]) -> tuple[bool, Any]:
    """The PROPFIND body, read and parsed once per request (WsgiDAV reads it again from a
    replay if it answers): (True, None) without a body, (True, the root element), or
    (False, None) when it cannot be read as XML (WsgiDAV answers 400)."""
    cached: tuple[bool, Any] | None = environ.get(_BODY_KEY)
    if cached is not None:
        return cached
    body = _raw_body(environ)
    parsed: tuple[bool, Any] = (True, None)
    if body is None:
        parsed = (False, None)
    elif body:
        try:
            parsed = (True, ElementTree.fromstring(body))
        except Exception:  # noqa: BLE001 - malformed XML: WsgiDAV answers 400
            parsed = (False, None)
    environ[_BODY_KEY] = parsed
    return parsed


_RAW_KEY = "davserver.propfind_raw"


def _raw_body(environ: dict[str, Any]) -> bytes | None:
    """The PROPFIND body's bytes, read once (b"" without one; None when Content-Length is
    not a number); the input is replaced by a replay so WsgiDAV can read it again. Its
    size is already capped at ``limits.xml_body_bytes`` (limits.py)."""
    if _RAW_KEY in environ:
        cached: bytes | None = environ[_RAW_KEY]
        return cached
    body: bytes | None = b""
    try:
        length = content_length(environ)
    except BadContentLength:
        body = None
    else:
        if length:
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)  # WsgiDAV can still read it if we pass
    environ[_RAW_KEY] = body
    return body


def _dead_props_asked(environ: dict[str, Any]) -> tuple[tuple[str, ...] | None, bool] | None:
    """Which dead properties a PROPFIND's answer carries: (None, True) all of them with
    their values (allprop, with or without include), (names, True) the named ones,
    (None, False) all names without values (propname); None when the body is not a
    propfind WsgiDAV would answer with properties (it answers 400)."""
    parsed, root = _propfind_body(environ)
    if not parsed:
        return None
    if root is None:
        return None, True
    if root.tag != "{DAV:}propfind" or not len(root):
        return None
    kind = root[0].tag
    if kind == "{DAV:}allprop":
        return None, True
    if kind == "{DAV:}propname":
        return None, False
    if kind == "{DAV:}prop":
        return tuple(dict.fromkeys(el.tag for el in root[0] if not el.tag.startswith("{DAV:}"))), True
    return None


#: Bytes of one ``<D:response>`` besides its properties and its href's name: the element,
#: the two propstat wrappers with their statuses (the fast path renders about 180).
_ENTRY_BYTES = 256
#: Bytes of one asked-for live DAV: property's value, at most as rendered (dates, lengths,
#: ETags, content types, quota figures; displayname is counted with the member's name).
_LIVE_VALUE_BYTES = 48
#: allprop or propname: the live properties of one member (about 560 bytes rendered,
#: supportedlock and an empty lockdiscovery included).
_ALLPROP_BYTES = 640
#: ``oc:checksums`` with its SHA-1 and MD5 (oc_compat.py): about 170 bytes rendered.
_CHECKSUMS_BYTES = 192
#: One ``<D:activelock>`` besides its owner: scope, type, depth, timeout, token and root.
_LOCK_ENTRY_BYTES = 512


def _asked_names(environ: dict[str, Any]) -> int:
    """How many property names a PROPFIND body asks for (``<D:prop>`` and allprop's
    ``<D:include>`` children, duplicates counted); 0 without a body or when it is not XML."""
    parsed, root = _propfind_body(environ)
    if not parsed or root is None:
        return 0
    return sum(len(el) for el in root if el.tag in ("{DAV:}prop", "{DAV:}include"))


def _name_bytes(clark: str) -> int:
    """Bytes one asked-for name costs in one member's ``<D:response>``: its element (as the
    fast path writes it; WsgiDAV's ``ns0:`` prefixes are about as long) and, for a live
    DAV: property, room for its value."""
    if clark.startswith("{DAV:}"):
        local = clark[6:]
        size = len(local.encode("utf-8"))
        if clark == "{DAV:}supportedlock":
            return len(_SUPPORTED_LOCK)
        if local in LIVE_PROPS or clark in _QUOTA or clark == "{DAV:}lockdiscovery":
            return 2 * size + 7 + _LIVE_VALUE_BYTES  # locks themselves: _lock_bytes
        return size + 8  # not a live property here: an empty element in the 404 propstat
    if clark == CHECKSUMS:
        return _CHECKSUMS_BYTES
    ns, _, local = clark[1:].partition("}")
    return len(local.encode("utf-8")) + len(escape(ns, _QUOT).encode("utf-8")) + 16


def _lock_bytes(provider: Share, ref: str, members: int, below: bool) -> int:
    """Bytes of lockdiscovery in the answer: each live lock on the resource or above it
    once per entry it covers (a depth-infinity lock shows on every member), each lock
    below it (``below``: Depth 1 of a folder) once. Every lock's owner is at most
    ``locks.max_owner_bytes`` (store/davstate.py check_owner)."""
    lm = provider.lock_manager
    if lm is None:
        return 0
    total = 0
    above = lm.get_indirect_url_lock_list(ref)
    seen = set()
    for lock in above:
        seen.add(lock.get("token"))
        covers = members + 1 if lock.get("depth") == "infinity" else 1
        total += covers * (_LOCK_ENTRY_BYTES + len(lock.get("owner") or b""))
    if below:
        for lock in lm.get_url_lock_list(ref, recursive=True):
            if lock.get("token") not in seen:
                total += _LOCK_ENTRY_BYTES + len(lock.get("owner") or b"")
    return total


def check_propfind(provider: Share, environ: dict[str, Any]) -> None:
    """Refuse a PROPFIND whose answer would be too large, before any of it is built.

    Called for every PROPFIND of a share before either path answers it (fs.py
    ``custom_request_handler``), so WsgiDAV's answer is bounded as the short one is.

    - More than ``properties.max_propfind_names`` names asked for (``<D:prop>`` or
      allprop's ``<D:include>``): 507, reason ``propfind_names_exceeded``.
    - An estimated answer over ``properties.max_propfind_bytes``: 507, reason
      ``answer_too_large``. The estimate, in bytes, is (entries) × (per-entry overhead
      + the rendered size of every asked-for name, or the live properties of allprop)
      + the href and displayname of each member (from its name on disk) + the stored
      dead properties asked for (measured by the store without reading them:
      store/davstate.py ``answer_bytes``) + lockdiscovery (:func:`_lock_bytes`).
      Entries are the resource plus, for Depth 1 of a folder, its members, counted
      with one scandir that stops as soon as the estimate is over the bound.

    Every asked-for name costs an entry per member even when no member has it (a
    404 propstat), so 60,000 undefined names over a folder of 200 files would be a
    325 MB answer: it is refused here. A streamed answer (folders over 1,000
    members) is estimated whole, like one that is sent in one piece.
    """
    pm = provider.prop_manager
    bounds = getattr(pm, "bounds", None)
    if bounds is None:
        return
    depth = environ.get("HTTP_DEPTH", "")
    path = environ["PATH_INFO"] or "/"
    limit: int = bounds.answer_bytes
    raw = _raw_body(environ)
    # Each name is at least one '<': a body with far more tags than the cap allows is
    # refused before it is parsed (60,000 elements cost ~30 MiB and 0.1 s to build).
    if (raw is not None and raw.count(b"<") > 2 * bounds.answer_names + 64) or \
            _asked_names(environ) > bounds.answer_names:
        provider._check_realm(environ)  # a request for another share hears that first
        raise refuse(environ, Refusal.PROPFIND_NAMES_EXCEEDED, f"over {bounds.answer_names} property names")
    asked = _dead_props_asked(environ)
    if asked is None:
        return  # WsgiDAV answers 400
    rel = path if path.startswith("/") else "/" + path
    ref = quote(provider.share_path.rstrip("/") + rel)
    names, values = asked
    requested = _requested_names(environ)
    if requested is None:  # allprop, propname
        per_entry = _ENTRY_BYTES + _ALLPROP_BYTES
        lockdiscovery = True
    else:
        per_entry = _ENTRY_BYTES + sum(_name_bytes(n) for n in requested)
        lockdiscovery = "{DAV:}lockdiscovery" in requested
    href_bytes = len(quote(provider.mount_path + ref).encode("ascii"))
    per_entry += href_bytes
    size = 0
    if names != () and getattr(pm, "answer_bytes", None) is not None:
        size += pm.answer_bytes(ref, members=depth == "1", names=names, values=values, stop_after=limit)
    size += per_entry
    members = 0
    if depth == "1" and size <= limit:
        try:
            file_path = provider._loc_to_file_path(path, environ)
            with os.scandir(file_path) as entries:
                for entry in entries:
                    members += 1
                    size += per_entry + 4 * len(entry.name.encode("utf-8", "surrogateescape"))
                    if size > limit:
                        break
        except (OSError, ValueError):
            pass  # not a folder, or missing: the answering path says so
    if size <= limit and lockdiscovery and provider.lock_manager is not None:
        size += _lock_bytes(provider, ref, members, below=depth == "1" and members > 0)
    if size > limit:
        provider._check_realm(environ)
        raise refuse(environ, Refusal.ANSWER_TOO_LARGE, f"over {limit} bytes of answer")


def _requested_names(environ: dict[str, Any]) -> tuple[str, ...] | None:
    """The names a ``<D:prop>`` (or allprop's ``<D:include>``) asks for, or None for
    allprop and propname (their answer is estimated per member, not per name)."""
    parsed, root = _propfind_body(environ)
    if not parsed or root is None or not len(root):
        return None
    if root[0].tag != "{DAV:}prop":
        return None
    return tuple(dict.fromkeys(el.tag for el in root[0] if isinstance(el.tag, str)))


_SUPPORTED_LOCK = (
    "<D:supportedlock>"
    "<D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>"
    "<D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>"
    "</D:supportedlock>"
)
#: What WsgiDAV's allprop lists for a file and for a folder of a filesystem share, in its order.
_ALLPROP_FILE = tuple(
    "{DAV:}" + n
    for n in ("resourcetype", "creationdate", "getcontentlength", "getcontenttype", "getlastmodified",
              "displayname", "getetag")
)
_ALLPROP_FOLDER = tuple(
    "{DAV:}" + n
    for n in ("resourcetype", "creationdate", "quota-used-bytes", "quota-available-bytes", "getlastmodified",
              "displayname")
)
_LOCK_PROPS = ("{DAV:}lockdiscovery", "{DAV:}supportedlock")
_QUOTA = ("{DAV:}quota-used-bytes", "{DAV:}quota-available-bytes")


def _prop_values(name: str, entry_name: str, path: str, st: os.stat_result, is_dir: bool,
                 etag: Callable[[os.stat_result], str], config: dict[str, Any]) -> str | None:
    if name == "resourcetype":
        return "<D:collection/>" if is_dir else ""
    if name == "displayname":
        return escape(display_name(entry_name))  # XML 1.0 cannot carry every name on disk (names.py)
    if name == "getlastmodified":
        return get_rfc1123_time(st.st_mtime)
    if name == "creationdate":
        return datetime.fromtimestamp(st.st_ctime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if is_dir:
        return None  # no length, type or ETag for folders: 404 in their propstat, as WsgiDAV
    if name == "getcontentlength":
        return str(st.st_size)
    if name == "getetag":
        return escape(entity_tag(etag(st)))  # quoted, the ETag header's value (RFC 4918 §15.6)
    if name == "getcontenttype":
        return escape(util.guess_mime_type(path, config))
    return None


def _dead_xml(value: bytes) -> str | None:
    """A stored dead property (its XML as WsgiDAV saved it) as an element to embed, or None if unusable."""
    try:
        el = ElementTree.fromstring(value)
    except Exception:  # noqa: BLE001 - WsgiDAV's path reports it its own way
        return None
    text: str = XMLTree.tostring(el, encoding="unicode")
    return text


class _FragmentCache:
    """Rendered ``<D:response>`` elements, keyed by everything they are made of.

    The key holds the href, the requested properties, the member's inode, mtime,
    ctime, size and mode, its dead properties and (folders) the quota figures, so
    a change simply misses: nothing needs invalidating. Two generations bound the
    memory: when the current one fills half the budget it becomes the old one and
    the older is dropped; hits in the old generation move to the current one.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.half = budget_bytes // 2
        self._current: dict[tuple[Any, ...], bytes] = {}
        self._old: dict[tuple[Any, ...], bytes] = {}
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        value = self._current.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: tuple[Any, ...], value: bytes) -> None:
        with self._lock:
            if self._size + len(value) > self.half:
                self._old, self._current, self._size = self._current, {}, 0
            self._current[key] = value
            self._size += len(value)


#: A 1,000-file folder renders to about 470 KB.
_fragments = _FragmentCache(8 << 20)


class _Member:
    """A resource in the answer. Its href is quoted only when its fragment is rendered:
    the cache knows a member by its folder's href and its name (``ident``)."""

    __slots__ = ("_href", "dead", "fs_path", "ident", "is_dir", "name", "path", "quota", "st")

    def __init__(self, fs_path: str, path: str, ident: str | tuple[str, str], name: str, st: os.stat_result,
                 is_dir: bool) -> None:
        self.fs_path = fs_path
        self.path = path
        self.ident = ident  # the href itself, or (the folder's href, name) for a member of the folder
        self.name = name
        self.st = st
        self.is_dir = is_dir
        self.dead: tuple[tuple[str, bytes], ...] = ()
        self.quota: tuple[int, int] | None = None
        self._href: str | None = None

    @property
    def href(self) -> str:
        if self._href is None:
            if isinstance(self.ident, str):
                self._href = self.ident
            else:
                base, name = self.ident
                self._href = base + quote_href(name) + ("/" if self.is_dir else "")
        return self._href

    @property
    def ref(self) -> str:
        """WsgiDAV's ref-URL: the key of dead properties and locks (asked for only when needed)."""
        return quote(self.path)


def _render(m: _Member, names: tuple[str, ...], allprop: bool, locking: bool,
            etag: Callable[[os.stat_result], str], config: dict[str, Any], *, strict: bool = True,
            checksums: bool = False) -> bytes | None:
    """One member's ``<D:response>``; None (strict) when a stored dead property does not
    parse. Not strict (the answer is already under way), such a property is reported
    as missing. A file's ``oc:checksums`` is the server's (oc_compat.py; ``checksums``:
    ``properties.checksums``), answered as WsgiDAV's path answers it (fs.py)."""
    dead = dict(m.dead)
    if allprop:
        names = (_ALLPROP_FOLDER if m.is_dir else _ALLPROP_FILE) + (_LOCK_PROPS if locking else ()) + tuple(dead)
    found: list[str] = []
    missing: list[str] = []
    for clark in names:
        element: str | None = None
        if clark.startswith("{DAV:}"):
            local = clark[6:]
            if local in LIVE_PROPS:
                value = _prop_values(local, m.name, m.path, m.st, m.is_dir, etag, config)
                if value is not None:
                    element = f"<D:{local}>{value}</D:{local}>" if value else f"<D:{local}/>"
            elif clark in _QUOTA:
                if m.quota is not None:
                    element = f"<D:{local}>{m.quota[0 if local == 'quota-used-bytes' else 1]}</D:{local}>"
            elif locking and clark == "{DAV:}lockdiscovery":
                element = "<D:lockdiscovery/>"
            elif locking and clark == "{DAV:}supportedlock":
                element = _SUPPORTED_LOCK
        elif clark == CHECKSUMS and not m.is_dir:
            value = stored_checksums(m.fs_path, m.st) if checksums else None
            element = checksums_xml(value) if value is not None else None
        elif clark in dead:
            element = _dead_xml(dead[clark])
            if element is None:
                if strict:
                    return None
                log.warning("stored property %s of %s does not parse: reported as missing", clark, m.ref)
        if element is None:
            missing.append(clark)
        else:
            found.append(element)
    out = [f"<D:response><D:href>{escape(m.href)}</D:href>"]
    if found:
        out.append("<D:propstat><D:prop>")
        out.extend(found)
        out.append("</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        out.append("<D:propstat><D:prop>")
        for clark in missing:
            if clark.startswith("{DAV:}"):
                out.append(f"<D:{clark[6:]}/>")
            else:
                ns, local = clark[1:].split("}", 1)
                out.append(f'<X:{local} xmlns:X="{escape(ns, _QUOT)}"/>')
        out.append("</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>")
    out.append("</D:response>")
    return "".join(out).encode("utf-8")


_QUOT = {'"': "&quot;"}


def _has_locks(provider: Share, ref: str, is_dir: bool, depth: str) -> bool:
    """Whether a lock sits on the resource or (Depth 1) anywhere below it: lockdiscovery shows it."""
    lm = provider.lock_manager
    return lm is not None and bool(lm.get_url_lock_list(ref, recursive=is_dir and depth == "1"))


#: Listing a folder is CPU work under the GIL with a system call per member: threads
#: doing it side by side hand the GIL back and forth after every call and burn CPU on
#: that. One at a time, they finish sooner; sending the answers still overlaps.
_rendering = threading.Lock()

_HEAD = b'<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus xmlns:D="DAV:">'
_TAIL = b"</D:multistatus>"
#: Members rendered per store query and per piece of a streamed answer.
_BATCH = 1000


class _Listing:
    """What one PROPFIND needs to render its members, batch by batch."""

    def __init__(self, provider: Share, names: tuple[str, ...], etag: Callable[[os.stat_result], str],
                 config: dict[str, Any]) -> None:
        self.names = names
        self.allprop = names == ()
        self.locking = provider.lock_manager is not None
        self.etag = etag
        self.config = config
        pm = provider.prop_manager
        self.get_many = getattr(pm, "get_many", None) if pm is not None else None
        self.needs_dead = pm is not None and (self.allprop or any(not n.startswith("{DAV:}") for n in names))
        self.needs_quota = self.allprop or any(n in _QUOTA for n in names)
        self.checksums = bool(getattr(provider, "checksums", False))
        self._usage: dict[int, tuple[int, int]] = {}

    def render(self, members: list[_Member], *, strict: bool) -> bytes | None:
        """The members' ``<D:response>`` elements; None (strict) when one needs WsgiDAV."""
        if self.needs_dead:
            if self.get_many is None:
                return None
            refs = [m.ref for m in members]
            stored = self.get_many(refs)
            for m, ref in zip(members, refs, strict=True):
                m.dead = stored.get(ref, ())
        if self.needs_quota:
            for m in members:
                if m.is_dir:
                    if m.st.st_dev not in self._usage:
                        du = shutil.disk_usage(m.fs_path)
                        self._usage[m.st.st_dev] = (du.used, du.free)
                    m.quota = self._usage[m.st.st_dev]
        out = []
        for m in members:
            mst = m.st
            # The ctime moves when checksums are kept (an xattr is set): a cached answer
            # never outlives them.
            key = (m.ident, self.names, self.locking, mst.st_ino, mst.st_mtime_ns, mst.st_ctime_ns, mst.st_size,
                   mst.st_mode, m.dead, m.quota, self.checksums)
            fragment = _fragments.get(key)
            if fragment is None:
                fragment = _render(m, self.names, self.allprop, self.locking, self.etag, self.config, strict=strict,
                                   checksums=self.checksums)
                if fragment is None:
                    return None
                _fragments.put(key, fragment)
            out.append(fragment)
        return b"".join(out)


def _stream(listing: _Listing, first: bytes, batches: Iterator[list[_Member]]) -> Iterator[bytes]:
    """A large folder's answer, sent as it is rendered: memory stays at one batch."""
    try:
        yield _HEAD + first
        while True:
            with _rendering:
                batch = next(batches, None)
                if batch is None:
                    break
                piece = listing.render(batch, strict=False) or b""
            yield piece
        yield _TAIL
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def fast_propfind(provider: Share, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """PROPFIND Depth 0/1 (named properties or allprop), or None to let WsgiDAV answer.

    Locks make WsgiDAV answer (lockdiscovery has to be rendered exactly); dead
    properties are fetched a batch of members at a time. A folder of more than
    one batch is streamed (chunked), so a 50,000-file folder does not have to fit
    in memory as one answer.
    """
    depth = environ.get("HTTP_DEPTH", "")
    path = environ["PATH_INFO"] or "/"  # check_propfind has bounded the answer (fs.py)
    if depth not in ("0", "1") or any(key in environ for key in _PRECONDITIONS):
        return None  # preconditions: WsgiDAV's path decides them (conditions.PreconditionServer)
    if any(is_temp_name(part) for part in path.split("/")):
        return None
    names = _requested_props(environ)
    if names is None:
        return None
    provider._check_realm(environ)
    file_path = provider._loc_to_file_path(path, environ)
    try:
        st = os.lstat(file_path)
    except OSError:
        return None
    kind = served_kind(st)
    if kind is None:
        return None
    share_path = provider.share_path.rstrip("/")
    is_dir = kind == "folder"
    rel = path if path.startswith("/") else "/" + path
    if is_dir and not rel.endswith("/"):
        rel += "/"
    prefix = provider.mount_path + share_path

    # WsgiDAV names a resource after its file on disk (for a share's root: the folder's name).
    top = _Member(file_path, share_path + rel, quote_href(prefix + rel),
                  os.path.basename(file_path.rstrip("/")), st, is_dir)
    # Members' hrefs: the folder's, quoted once, and each name quoted on its own (quoting
    # works character by character, so this is the same as quoting the whole path).
    base_path, base_href = share_path + rel, top.href

    def member(fs_path: str, name: str, mst: os.stat_result, mdir: bool) -> _Member:
        return _Member(fs_path, base_path + name + ("/" if mdir else ""), (base_href, name), name, mst, mdir)

    listing = _Listing(provider, names, etag, environ["wsgidav.config"])
    if (listing.locking and (listing.allprop or "{DAV:}lockdiscovery" in names)
            and _has_locks(provider, top.ref, is_dir, depth)):
        return None

    def batches() -> Generator[list[_Member], None, None]:
        batch = [top]
        if is_dir and depth == "1":
            hide_clutter = provider.share.macos_clutter != "allow"
            try:
                entries = os.scandir(file_path)
            except OSError as exc:  # the status WsgiDAV's path gives (fs.py get_member_names)
                raise dav_error(exc, f"listing {file_path}", environ, creating=False) from None
            with entries:
                for entry in entries:
                    name = entry.name
                    if is_hidden(name, hide_clutter=hide_clutter):
                        continue
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    mkind = served_kind(est)
                    if mkind is not None:
                        batch.append(member(entry.path, name, est, mkind == "folder"))
                    if len(batch) > _BATCH:  # the folder itself plus 1,000 members still go in one piece
                        yield batch
                        batch = []
        if batch:
            yield batch

    pieces = batches()
    try:
        with _rendering:
            first = listing.render(next(pieces), strict=True)
            second = next(pieces, None)
    except BaseException:
        pieces.close()
        raise
    if first is None:
        pieces.close()
        return None
    date = ("Date", get_rfc1123_time())
    content_type = ("Content-Type", "application/xml; charset=utf-8")
    if second is None:
        body = _HEAD + first + _TAIL
        start_response("207 Multi-Status", [content_type, ("Content-Length", str(len(body))), date])
        return [body]
    start_response("207 Multi-Status", [content_type, date])
    return _stream(listing, first, itertools.chain([second], pieces))
