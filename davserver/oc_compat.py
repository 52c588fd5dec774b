"""What ownCloud-style sync clients rely on: ``X-OC-Mtime`` on PUT and ``oc:checksums``.

rclone's WebDAV backend can only keep a folder in sync when the server lets it set
a file's modification time; with ``vendor = other`` it compares sizes alone, so an
edit that keeps the size (``1000 EUR`` → ``9000 EUR``) is never uploaded. With
``vendor = owncloud`` (rclone backend/webdav/webdav.go, ``setQuirks``, the
``"owncloud"`` case, 1.60.1:547 / master:645) it

* sends ``X-OC-Mtime: <Unix seconds>`` with every PUT (webdav.go ``extraHeaders``,
  master:1616-1619; 1.60.1:1317-1320) and, from 1.61 on, looks for the answer header
  ``X-OC-Mtime: accepted`` (master:1204) before falling back to a PROPPATCH;
* sends ``OC-Checksum: SHA1:<hex>`` (or ``MD5:<hex>``) with every PUT
  (master:1620-1632);
* asks PROPFIND for ``<oc:checksums/>`` in ``http://owncloud.org/ns``
  (``owncloudProps``, master:760-775) and reads
  ``<oc:checksums><oc:checksum>SHA1:<hex> MD5:<hex></oc:checksum></oc:checksums>``:
  any namespace, lower-cased, split on spaces, ``sha1:``/``md5:`` prefixes
  (api/types.go ``Prop.Checksums`` :78 and ``Hashes`` :114-130). After an upload it
  compares these with the source's hashes and reports a mismatch as corruption,
  so a checksum given must be right; a missing one is simply not compared.

Here:

* **X-OC-Mtime** (:func:`read_mtime`): a plain ASCII decimal integer of Unix seconds
  from 0 to :data:`MAX_MTIME` (9999-12-31T23:59:59Z, the last instant an HTTP-date can
  carry, RFC 9110 §5.6.7). Anything else — negative, fractional, signed, non-ASCII
  digits, a list, past 9999 — refuses the PUT with 400 before its body is read, so the
  old file stays; ownCloud and Nextcloud refuse such values the same way (400 "X-OC-MTime
  header must be an integer"), and a client that sends one has a bug worth seeing. The
  time is set on the upload's temp file before it is renamed over the target
  (fs.py ``AtomicFile.close``), so the ETag and Last-Modified of the answer, and of both
  PROPFIND paths afterwards, describe the file with its new time; the answer carries
  ``X-OC-MTime: accepted``. WsgiDAV's own ``honor_mtime_header`` set the time after the
  ETag was computed (request_server.py:826-831) and said nothing; it stays off.
* **Checksums** are computed while the PUT streams (the bytes pass through anyway),
  SHA-1 and MD5, and kept in an extended attribute of the file (:data:`XATTR`),
  stamped with the file's (size, mtime_ns, inode). A PROPFIND reports them only while
  the stamp still matches the file: a file changed on disk by other means (in place:
  new mtime or size; replaced: new inode) has no checksum until it is uploaded again.
  The limit (docs/clients.md, rclone): an edit in place that keeps the size and sets the
  old mtime back (``touch -r``, ``os.utime``), or a same-size write within the
  filesystem's timestamp tick, keeps the stamp, so the old checksums are still answered;
  the ctime, the one time no tool can set back, cannot be in the stamp, as setting the
  xattr itself moves it. Nothing is ever hashed inside a PROPFIND.
  ``properties.checksums: false`` turns the hashing and the property off.
* **Why an xattr and not the dead-property store**: the checksum describes the bytes
  of one inode, and an xattr lives and dies with that inode: a MOVE (rename) keeps it,
  a COPY writes a new file whose checksums are computed as it is written, a DELETE or
  an editor's save-by-rename drops it, with no store traffic, no per-resource property
  budget spent and nothing a client can PROPPATCH. Reading it costs one ``getxattr``
  per file named in a PROPFIND that asks for ``oc:checksums``. Where the filesystem
  has no user xattrs (some NFS, FAT) no checksum is reported and rclone compares
  size and modification time, which X-OC-Mtime makes exact.
* **OC-Checksum** (:func:`read_expected`): ``SHA1:``, ``MD5:`` or ``ADLER32:`` with hex
  digits. An ADLER32 is compared as the number it writes: the ownCloud and Nextcloud
  desktop clients send it without leading zeros (``calcAdler32`` in
  src/common/checksums.cpp: ``QByteArray::number(adler, 16)``, so ``hello`` is
  ``62c0215``), PHP's ``hash('adler32')`` with eight digits; both are the same
  checksum. When the received body's digest differs, the upload is refused with 400 and
  the old file is kept (ownCloud answers the same: "The computed checksum does not
  match the one received from the client"). A type not in that list is ignored.
* **PROPPATCH** (rclone since 1.61, ``SetModTime``, master:1448-1526, when a file's time
  differs but its checksum matches, e.g. after ``touch``): ``<DAV:lastmodified>`` with
  Unix seconds sets a file's modification time (:func:`set_mtime`; the same rule as
  X-OC-Mtime, else 409) and carries the kept checksums over to the new time, since the
  bytes did not change. rclone sends ``oc:checksums`` in the same PROPPATCH, which must
  then succeed as a whole (RFC 4918 §9.2): a value that agrees with the server's (every
  type both name is equal) or that cannot be checked (none kept) is answered 200 and
  stores nothing; the server's own stay the ones answered. One that contradicts them
  is 409, and removing it 403.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError
from wsgidav.xml_tools import etree

from .access import Refusal
from .request_context import request_context

__all__ = ["CHECKSUMS", "LASTMODIFIED", "MAX_MTIME", "OC_NS", "XATTR", "Digests", "Expected",
           "agrees", "checksums_element", "checksums_xml", "parse_seconds", "read_expected", "read_mtime",
           "set_mtime", "store_checksums", "stored_checksums"]

log = logging.getLogger("davserver.oc_compat")

OC_NS = "http://owncloud.org/ns"
#: The property rclone's owncloud vendor asks for (Clark notation).
CHECKSUMS = "{http://owncloud.org/ns}checksums"
#: What rclone's owncloud vendor PROPPATCHes to set a time (webdav.go ``owncloudPropset``, master:1448).
LASTMODIFIED = "{DAV:}lastmodified"
#: The latest X-OC-Mtime accepted: 9999-12-31T23:59:59Z (an HTTP-date has four year digits).
MAX_MTIME = 253_402_300_799
#: Where the checksums of a file are kept: ``1 <size> <mtime_ns> <inode> SHA1:<hex> MD5:<hex>``.
XATTR = "user.davserver.checksums"
#: The parsed X-OC-Mtime of this request (read_mtime's own cache; whether a PUT stored
#: it is ``RequestContext.mtime_accepted``, set by fs.py).
_MTIME_KEY = "davserver.oc_mtime"

_DIGITS = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-f]+")
#: Largest xattr value read back; ours are about 120 bytes.
_XATTR_MAX = 512
#: Filesystem errors that mean "no user xattrs here" (logged once, then silent).
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC, errno.E2BIG,
             errno.EROFS, errno.EDQUOT}
_warned = False


def parse_seconds(text: str) -> int | None:
    """Whole Unix seconds from ``text`` (spaces and tabs around it allowed): 1-12 ASCII
    digits, at most :data:`MAX_MTIME`; None for anything else."""
    text = text.strip(" \t")
    if not _DIGITS.fullmatch(text) or int(text) > MAX_MTIME:
        return None
    return int(text)


def read_mtime(environ: dict[str, Any]) -> int | None:
    """The PUT's ``X-OC-Mtime`` in whole Unix seconds, or None without the header.

    Read once per request (kept in the environ). Raises DAVError 400 (audit reason
    ``bad_mtime``) for a value that is not 1-12 ASCII digits or is past
    :data:`MAX_MTIME`; surrounding spaces and tabs are allowed (RFC 9110 §5.5 OWS)."""
    if _MTIME_KEY in environ:
        cached: int | None = environ[_MTIME_KEY]
        return cached
    raw = environ.get("HTTP_X_OC_MTIME")
    value: int | None = None
    if raw is not None:
        value = parse_seconds(raw)
        if value is None:
            request_context(environ).refuse(str(Refusal.BAD_MTIME))
            raise DAVError(HTTP_BAD_REQUEST, "X-OC-Mtime must be whole seconds since 1970 (0 to 253402300799).")
    environ[_MTIME_KEY] = value
    return value


@dataclass(frozen=True)
class Expected:
    """A client's ``OC-Checksum``: ``algorithm`` (``sha1``, ``md5``, ``adler32``) and its
    lower-case hex ``digest`` as sent (which may be no valid digest: it then never matches)."""

    algorithm: str
    digest: str


_ALGORITHMS = ("sha1", "md5", "adler32")


def read_expected(environ: dict[str, Any]) -> Expected | None:
    """The PUT's ``OC-Checksum`` (``TYPE:HEX``; the first of several separated by spaces
    that has a known type), or None when there is none of a type we compute."""
    raw = environ.get("HTTP_OC_CHECKSUM")
    if not raw:
        return None
    for item in raw.split():
        kind, sep, digest = item.partition(":")
        if sep and kind.lower() in _ALGORITHMS:
            return Expected(kind.lower(), digest.lower())
    return None


#: Blocks at least this large have their MD5 computed beside the request's thread.
_SIDE_BLOCK = 1 << 16
_side_pool: ThreadPoolExecutor | None = None
_side_lock = threading.Lock()


def _side() -> ThreadPoolExecutor:
    """The threads that compute uploads' MD5 beside their request threads (one per core)."""
    global _side_pool
    with _side_lock:
        if _side_pool is None:
            _side_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="davserver-md5")
        return _side_pool


class Digests:
    """The checksums of an upload, fed block by block (``update``).

    ``keep`` computes SHA-1 and MD5 to store; ``expected`` adds the algorithm the client
    named (ADLER32 only then). hashlib releases the GIL for blocks over 2 KiB, so the
    MD5 (the slower, ~690 MiB/s on one core against SHA-1's ~1,580) of a large block
    runs on another thread while the request's thread hashes SHA-1, writes the block and
    reads the next; at most one block per upload is in flight there, so the order holds
    and memory stays at one block. A 256 MiB PUT over TLS from the same 2-core VM (the
    client takes the other core): 0.44-0.48 s without checksums, 1.01 s with both
    hashes on the request's thread, 0.85 s with MD5 beside it; with the client on
    another machine the second core is free for it. ``properties.checksums: false``
    saves the rest."""

    def __init__(self, *, keep: bool, expected: Expected | None) -> None:
        self.keep = keep
        self.expected = expected
        self._hashes: dict[str, Any] = {}
        if keep:
            self._hashes["sha1"] = hashlib.sha1(usedforsecurity=False)
        if expected is not None and expected.algorithm == "sha1":
            self._hashes.setdefault("sha1", hashlib.sha1(usedforsecurity=False))
        self._md5 = hashlib.md5(usedforsecurity=False) if keep or (expected and expected.algorithm == "md5") else None
        self._pending: Future[None] | None = None
        self._adler: int | None = 1 if expected is not None and expected.algorithm == "adler32" else None

    def update(self, data: bytes) -> None:
        """Feed the next block of the upload (bytes, in order) to every checksum: MD5 of a
        block of at least ``_SIDE_BLOCK`` bytes on the side thread (after the previous
        one's is done), the others here. Re-raises an error of the side thread's hashing."""
        if self._md5 is not None:
            self._settle()
            if len(data) >= _SIDE_BLOCK:
                self._pending = _side().submit(self._md5.update, data)
            else:
                self._md5.update(data)
        for h in self._hashes.values():
            h.update(data)
        if self._adler is not None:
            self._adler = zlib.adler32(data, self._adler)

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _hex(self, algorithm: str) -> str:
        if algorithm == "adler32":
            return f"{self._adler or 0:08x}"
        if algorithm == "md5":
            self._settle()
            assert self._md5 is not None
            return self._md5.hexdigest()
        digest: str = self._hashes[algorithm].hexdigest()
        return digest

    def matches(self) -> bool:
        """Whether the body's digest is the client's ``OC-Checksum`` (True without one).
        An ADLER32 of 1 to 8 hex digits is compared by value (leading zeros or none)."""
        exp = self.expected
        if exp is None:
            return True
        if exp.algorithm == "adler32":
            digits = exp.digest
            return (len(digits) <= 8 and _HEX.fullmatch(digits) is not None
                    and int(digits, 16) == int(self._hex("adler32"), 16))
        return self._hex(exp.algorithm) == exp.digest

    def check(self, environ: dict[str, Any] | None) -> None:
        """Raise DAVError 400 (audit reason ``checksum_mismatch``) when the body's digest
        is not the client's ``OC-Checksum`` (:meth:`matches`)."""
        exp = self.expected
        if exp is None or self.matches():
            return
        log.info("PUT refused: the body's %s is not the one the client sent", exp.algorithm)
        if environ is not None:
            request_context(environ).refuse(str(Refusal.CHECKSUM_MISMATCH))
        raise DAVError(HTTP_BAD_REQUEST, "The computed checksum does not match the one received from the client.")

    def value(self) -> str:
        """``SHA1:<hex> MD5:<hex>``, as ownCloud writes ``oc:checksum``."""
        return f"SHA1:{self._hex('sha1')} MD5:{self._hex('md5')}"


def _stamp(st: os.stat_result) -> str:
    return f"1 {st.st_size} {st.st_mtime_ns} {st.st_ino}"


def store_checksums(fd: int, value: str) -> None:
    """Keep ``value`` (:meth:`Digests.value`) on the open file ``fd``, stamped with its
    current size, mtime and inode. A filesystem without user xattrs keeps nothing
    (logged once); the upload goes on."""
    global _warned
    try:
        st = os.fstat(fd)
        os.setxattr(fd, XATTR, f"{_stamp(st)} {value}".encode("ascii"))
    except OSError as exc:
        if exc.errno not in _NO_XATTR:
            raise
        if not _warned:
            _warned = True
            log.warning("no checksums kept: the share's filesystem refused a user xattr (%s)", exc)


def stored_checksums(path: str, st: os.stat_result) -> str | None:
    """The checksums kept for the file at ``path`` (``SHA1:<hex> MD5:<hex>``), or None when
    there are none or their stamp is not ``st``'s (size, mtime_ns, inode): the file was
    changed by other means since. One ``getxattr``, symlinks not followed; never hashes."""
    return _read_stamped(path, st)


def _read_stamped(file: str | int, st: os.stat_result) -> str | None:
    try:
        raw = os.getxattr(file, XATTR) if isinstance(file, int) else os.getxattr(file, XATTR, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    if len(raw) > _XATTR_MAX:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    stamp = _stamp(st)
    if not text.startswith(stamp + " "):
        return None
    sums = text[len(stamp) + 1:].split(" ")
    if len(sums) != 2 or not all(s.startswith(p) and _HEX.fullmatch(s[len(p):])
                                 for s, p in zip(sums, ("SHA1:", "MD5:"), strict=True)):
        return None
    return " ".join(sums)


def set_mtime(path: str, seconds: int) -> os.stat_result:
    """Set the modification time of the regular file at ``path`` (symlinks not followed)
    to ``seconds``; checksums kept for it (:func:`stored_checksums`) are re-stamped with
    the new time, as its bytes did not change. All on one open file, so a PUT replacing
    the file meanwhile cannot get the old file's checksums. Returns the new stat; raises
    OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        before = os.fstat(fd)
        kept = _read_stamped(fd, before)
        os.utime(fd, ns=(before.st_atime_ns, seconds * 1_000_000_000))
        if kept is not None:
            store_checksums(fd, kept)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _parse_sums(text: str) -> dict[str, str]:
    """``TYPE:hex`` items separated by spaces → {type: hex}, both lower-case."""
    out = {}
    for item in text.split():
        kind, sep, digest = item.partition(":")
        if sep:
            out[kind.lower()] = digest.lower()
    return out


def agrees(claimed: str, ours: str | None) -> bool:
    """Whether a client's ``oc:checksum`` text agrees with the server's (``ours``, None when
    none are kept): every type both name has the same digest."""
    if ours is None:
        return True
    mine = _parse_sums(ours)
    return all(mine[k] == v for k, v in _parse_sums(claimed).items() if k in mine)


def checksums_element(value: str) -> Any:
    """``<oc:checksums><oc:checksum>value</oc:checksum></oc:checksums>`` for WsgiDAV's path."""
    el = etree.Element(CHECKSUMS)
    etree.SubElement(el, "{http://owncloud.org/ns}checksum").text = value
    return el


def checksums_xml(value: str) -> str:
    """The same element as the short PROPFIND path writes it (``value`` is ASCII hex)."""
    return f'<O:checksums xmlns:O="{OC_NS}"><O:checksum>{value}</O:checksum></O:checksums>'
