"""Fast answers for the two requests clients make most: GET of a file, and
PROPFIND Depth 0/1 asking for standard live properties.

WsgiDAV answers them through layers that resolve the same path several
times (realpath + commonpath each), compute each property separately and
build the XML as an element tree: a 4 KiB GET and a PROPFIND of a
1,000-file folder cost many times what the work needs. Here a GET resolves
and opens the file once, and a PROPFIND lists the folder with one scandir
pass and writes the multistatus directly. Anything else — ranges,
conditional requests, dead properties, lock discovery, allprop — goes to
WsgiDAV unchanged, so behaviour is the same; the suites that run against
WsgiDAV (litmus among them) run against these paths too.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from defusedxml import ElementTree
from wsgidav import util

from .config import is_macos_clutter

if TYPE_CHECKING:
    from .fs import ShareProvider

__all__ = ["LIVE_PROPS", "fast_get", "fast_propfind"]

_BLOCK = 1 << 18
#: Live properties answered from one stat per member.
LIVE_PROPS = frozenset(
    {"resourcetype", "getcontentlength", "getlastmodified", "getetag", "creationdate", "displayname",
     "getcontenttype"}
)
_CONDITIONAL = ("HTTP_IF", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF_RANGE", "HTTP_RANGE")


def _file_body(fd: int) -> Iterator[bytes]:
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(_BLOCK):
            yield chunk


def fast_get(provider: ShareProvider, environ: dict[str, Any], start_response: Callable[..., Any],
             etag: Callable[[os.stat_result], str], is_temp: Callable[[str], bool]) -> Any:
    """A plain GET/HEAD of a regular file, or None to let WsgiDAV answer."""
    if any(key in environ for key in _CONDITIONAL) or environ.get("CONTENT_LENGTH", "0") not in ("", "0"):
        return None
    path = environ["PATH_INFO"]
    if path.endswith("/") or any(is_temp(part) for part in path.split("/")):
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
    headers = [
        ("Content-Length", str(st.st_size)),
        ("Last-Modified", util.get_rfc1123_time(st.st_mtime)),
        ("Content-Type", util.guess_mime_type(path, environ["wsgidav.config"])),
        ("Date", util.get_rfc1123_time()),
        ("ETag", f'"{etag(st)}"'),
        ("Accept-Ranges", "bytes"),
    ]
    start_response("200 OK", headers)
    if environ["REQUEST_METHOD"] == "HEAD":
        os.close(fd)
        return [b""]
    return _file_body(fd)


def _requested_props(environ: dict[str, Any]) -> list[str] | None:
    """The DAV: live property names asked for, or None when the request needs WsgiDAV."""
    length = environ.get("CONTENT_LENGTH", "")
    if not length.isdigit() or int(length) == 0:
        return None  # no body means allprop: dead properties and locks are involved
    body = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = _Replay(body)  # WsgiDAV can still read it if we pass
    try:
        root = ElementTree.fromstring(body)
    except Exception:  # noqa: BLE001 - malformed XML: WsgiDAV answers 400
        return None
    if root.tag != "{DAV:}propfind" or len(root) != 1 or root[0].tag != "{DAV:}prop":
        return None
    names = []
    for el in root[0]:
        if not el.tag.startswith("{DAV:}") or el.tag[6:] not in LIVE_PROPS or len(el):
            return None
        names.append(el.tag[6:])
    return names or None


class _Replay:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        data, self._body = (self._body, b"") if size < 0 else (self._body[:size], self._body[size:])
        return data


def _prop_values(name: str, entry_name: str, path: str, st: os.stat_result, is_dir: bool,
                 etag: Callable[[os.stat_result], str], config: dict[str, Any]) -> str | None:
    if name == "resourcetype":
        return "<D:collection/>" if is_dir else ""
    if name == "displayname":
        return escape(entry_name)
    if name == "getlastmodified":
        return util.get_rfc1123_time(st.st_mtime)
    if name == "creationdate":
        return datetime.fromtimestamp(st.st_ctime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if is_dir:
        return None  # no length, type or ETag for folders: 404 in their propstat, as WsgiDAV
    if name == "getcontentlength":
        return str(st.st_size)
    if name == "getetag":
        return escape(etag(st))  # unquoted, as WsgiDAV writes it on its own path
    if name == "getcontenttype":
        return escape(util.guess_mime_type(path, config))
    return None


class _FragmentCache:
    """Rendered ``<D:response>`` elements, keyed by everything they are made of.

    The key holds the href, the requested properties and the member's inode,
    mtime, ctime, size and mode, so a changed file simply misses: nothing needs
    invalidating. Two generations bound the memory: when the current one fills
    half the budget it becomes the old one and the older is dropped; hits in the
    old generation move to the current one.
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


def _render(href: str, name: str, st: os.stat_result, is_dir: bool, names: tuple[str, ...],
            etag: Callable[[os.stat_result], str], config: dict[str, Any]) -> bytes:
    found: list[tuple[str, str]] = []
    missing: list[str] = []
    for prop in names:
        value = _prop_values(prop, name, href, st, is_dir, etag, config)
        if value is None:
            missing.append(prop)
        else:
            found.append((prop, value))
    out = [f"<D:response><D:href>{escape(quote(href))}</D:href>"]
    if found:
        out.append("<D:propstat><D:prop>")
        out.extend(f"<D:{p}>{v}</D:{p}>" if v else f"<D:{p}/>" for p, v in found)
        out.append("</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        out.append("<D:propstat><D:prop>")
        out.extend(f"<D:{p}/>" for p in missing)
        out.append("</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>")
    out.append("</D:response>")
    return "".join(out).encode("utf-8")


def fast_propfind(provider: ShareProvider, environ: dict[str, Any], start_response: Callable[..., Any],
                  etag: Callable[[os.stat_result], str], is_temp: Callable[[str], bool]) -> Any:
    """PROPFIND Depth 0/1 for live properties only, or None to let WsgiDAV answer."""
    depth = environ.get("HTTP_DEPTH", "")
    if depth not in ("0", "1") or "HTTP_IF" in environ:
        return None
    path = environ["PATH_INFO"] or "/"
    if any(is_temp(part) for part in path.split("/")):
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
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    config = environ["wsgidav.config"]
    base = environ.get("SCRIPT_NAME", "") + path
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir and not base.endswith("/"):
        base += "/"
    members: list[tuple[str, str, os.stat_result, bool]] = [(base, os.path.basename(path.rstrip("/")), st, is_dir)]
    if is_dir and depth == "1":
        hide_clutter = provider.share.macos_clutter != "allow"
        with os.scandir(file_path) as entries:
            for entry in entries:
                name = entry.name
                if is_temp(name) or (hide_clutter and is_macos_clutter(name)):
                    continue
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(est.st_mode):
                    members.append((base + name + "/", name, est, True))
                elif stat.S_ISREG(est.st_mode):
                    members.append((base + name, name, est, False))
    wanted = tuple(names)
    out = [b'<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus xmlns:D="DAV:">']
    for href, name, mst, mdir in members:
        key = (href, wanted, mst.st_ino, mst.st_mtime_ns, mst.st_ctime_ns, mst.st_size, mst.st_mode)
        fragment = _fragments.get(key)
        if fragment is None:
            fragment = _render(href, name, mst, mdir, wanted, etag, config)
            _fragments.put(key, fragment)
        out.append(fragment)
    out.append(b"</D:multistatus>")
    body = b"".join(out)
    start_response("207 Multi-Status", [("Content-Type", "application/xml; charset=utf-8"),
                                        ("Content-Length", str(len(body))), ("Date", util.get_rfc1123_time())])
    return [body]
