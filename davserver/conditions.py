"""HTTP preconditions (RFC 9110 §13) and the WebDAV ``If`` header (RFC 4918 §10.4),
decided in one place for the short GET path (fastpath.py) and every WsgiDAV method.

WsgiDAV 4.4 (util.py:1601 ``evaluate_http_conditionals``, request_server.py:253
``_evaluate_if_headers``) gets these wrong, and clients notice:

* ``If-Modified-Since`` equal to ``Last-Modified`` gave 200 (it compared ``>``); §13.1.3:
  not modified when the date is not earlier than the file's. Office then believes
  someone else changed a document it is editing.
* its 304 carried no ``ETag`` nor ``Last-Modified``; §15.4.5: a 304 MUST carry the ETag a
  200 would have.
* ``If-Match`` compared weakly (``W/`` stripped); §13.1.1 wants strong comparison.
* ``If-Modified-Since`` was evaluated for every method (a PROPFIND could get a 304);
  §13.1.3: only GET and HEAD. ``If-Unmodified-Since`` was evaluated next to ``If-Match``;
  §13.1.4: ignored then.
* a target that does not exist yet skipped every precondition (``if res is None:
  return``), and MKCOL never evaluated any (request_server.py:587, a TODO): ``If-Match: *``
  or an ``If`` header naming a lock token no lock holds created the file (201). §13.1.1:
  ``If-Match`` is false when there is no current representation; RFC 4918 §10.4.1: an If
  header that is false is 412.

:func:`evaluate` is the RFC 9110 §13.2.2 order on the target's :class:`Validators`
(None when it does not exist); :func:`if_header_holds` the RFC 4918 If header, on the
lists WsgiDAV parsed (``util.parse_if_header_dict``), for a resource that may be
missing. :class:`PreconditionServer` is WsgiDAV's request server with both in its one
precondition hook, also for a missing PUT/MKCOL/LOCK target. Entity-tags are strong
(fs.py makes them from inode, nanosecond mtime and size); ``getetag`` and the ``ETag``
header are both :func:`entity_tag` of the same opaque tag (RFC 4918 §15.6).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from wsgidav import util

from .upstream import HTTP_NOT_MODIFIED, HTTP_PRECONDITION_FAILED, DAVError, RequestServer

__all__ = ["PreconditionServer", "Validators", "entity_tag", "evaluate", "if_header_holds", "parse_entity_tags",
           "parse_http_date", "precondition_error", "validator_headers"]


@dataclass(frozen=True)
class Validators:
    """What preconditions compare with: ``etag`` the opaque-tag without quotes (strong;
    None for a resource without one, e.g. a folder) and ``last_modified`` in whole
    seconds since the epoch, as the ``Last-Modified`` header shows it (None if unknown)."""

    etag: str | None
    last_modified: int | None


def entity_tag(opaque: str) -> str:
    """The entity-tag of an opaque tag, as the ``ETag`` header and ``DAV:getetag`` carry it:
    ``abc`` -> ``"abc"`` (RFC 9110 §8.8.3; RFC 4918 §15.6)."""
    return f'"{opaque}"'


def validator_headers(current: Validators) -> list[tuple[str, str]]:
    """``ETag`` and ``Last-Modified`` of a 200, also sent on its 304 (RFC 9110 §15.4.5)."""
    headers = []
    if current.etag is not None:
        headers.append(("ETag", entity_tag(current.etag)))
    if current.last_modified is not None:
        headers.append(("Last-Modified", util.get_rfc1123_time(current.last_modified)))
    return headers


def parse_entity_tags(value: str) -> list[tuple[bool, str]]:
    """The members of an ``If-Match``/``If-None-Match`` value as (weak, opaque-tag) pairs.

    ``"a", W/"b"`` -> ``[(False, "a"), (True, "b")]``; ``*`` is the member ``(False, "*")``.
    A comma inside quotes belongs to the tag (RFC 9110 §8.8.3 etagc). A member without
    quotes is taken as its text (``abc`` -> ``(False, "abc")``): clients that stored the
    unquoted ``getetag`` earlier versions listed echo it that way, and it can only ever
    match the current tag exactly.
    """
    tags: list[tuple[bool, str]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        weak = value.startswith("W/", i)
        j = i + 2 if weak else i
        if j < n and value[j] == '"':
            end = value.find('"', j + 1)
            if end < 0:
                end = n
            tags.append((weak, value[j + 1:end]))
            i = end + 1
        else:
            end = value.find(",", i)
            end = n if end < 0 else end
            tags.append((False, value[i:end].strip(" \t")))
            i = end
    return tags


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                      "Dec"), 1)}
_T = r"(\d\d):(\d\d):(\d\d)"
_M = "(" + "|".join(_MONTHS) + ")"
_IMF = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) " + _M + r" (\d{4}) " + _T + " GMT")
_RFC850 = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-" + _M + r"-(\d\d) "
                     + _T + " GMT")
_ASCTIME = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _M + r" ([ \d]\d) " + _T + r" (\d{4})")


def parse_http_date(value: str, *, now_year: int | None = None) -> int | None:
    """Seconds since the epoch of an HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, the obsolete
    RFC 850 and asctime forms), or None when ``value`` is none of them (the field is then
    ignored, §13.1.3/§13.1.4). A two-digit RFC 850 year more than 50 years ahead of
    ``now_year`` (default: this year) is taken as the past century's."""
    value = value.strip(" \t")
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        if now_year is None:
            now_year = time.gmtime().tm_year
        y = now_year - now_year % 100 + int(yy)
        year = str(y - 100 if y > now_year + 50 else y)
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    fields = (int(year), _MONTHS[mon], int(day.strip()), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1] and fields[3] < 24 and fields[4] < 60
            and fields[5] < 61):
        return None
    return calendar.timegm((*fields, 0, 0, 0))


def precondition_error(status: int, current: Validators) -> DAVError:
    """The DAVError for an :func:`evaluate` outcome on an existing target: a 304 with the
    validators of the 200 (RFC 9110 §15.4.5), or a 412."""
    if status == HTTP_NOT_MODIFIED:
        return DAVError(HTTP_NOT_MODIFIED, add_headers=validator_headers(current))
    return DAVError(HTTP_PRECONDITION_FAILED, "A precondition header failed.")


def _matches(value: str, current: Validators | None, *, strong: bool) -> bool:
    """Whether an If-Match/If-None-Match value matches the current representation:
    ``*`` any that exists; otherwise a member equal to its tag (strong comparison: neither
    weak, RFC 9110 §8.8.3.2; weak comparison: the opaque-tags equal)."""
    if current is None:
        return False
    for weak, tag in parse_entity_tags(value):
        if tag == "*" and not weak:
            return True
        if current.etag is not None and tag == current.etag and not (strong and weak):
            return True
    return False


def evaluate(method: str, environ: Mapping[str, Any], current: Validators | None) -> int | None:
    """The answer RFC 9110 §13.2.2 gives a request's preconditions on its target, or None
    to go on: 412 (Precondition Failed) or 304 (Not Modified, GET and HEAD only).

    ``method`` is the request method, ``environ`` holds the headers as WSGI keys
    (``HTTP_IF_MATCH`` …), ``current`` the target's validators or None when it does not
    exist. The caller has already made every check whose failure would be another
    status (§13.2.1: 404 for a missing GET, 409 for a missing parent …). Order:
    If-Match (strong), else If-Unmodified-Since; If-None-Match (weak; 304 for GET/HEAD,
    412 otherwise), else for GET/HEAD If-Modified-Since (304 when the file's date is not
    later). A date that does not parse is ignored, as is a date on a missing target.
    """
    safe = method in ("GET", "HEAD")
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None:
        if not _matches(if_match, current, strong=True):
            return HTTP_PRECONDITION_FAILED
    elif "HTTP_IF_UNMODIFIED_SINCE" in environ and current is not None and current.last_modified is not None:
        date = parse_http_date(environ["HTTP_IF_UNMODIFIED_SINCE"])
        if date is not None and current.last_modified > date:
            return HTTP_PRECONDITION_FAILED
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if _matches(if_none_match, current, strong=False):
            return HTTP_NOT_MODIFIED if safe else HTTP_PRECONDITION_FAILED
    elif safe and "HTTP_IF_MODIFIED_SINCE" in environ and current is not None and current.last_modified is not None:
        date = parse_http_date(environ["HTTP_IF_MODIFIED_SINCE"])
        if date is not None and current.last_modified <= date:
            return HTTP_NOT_MODIFIED
    return None


def if_header_holds(if_lists: Mapping[str, list[list[tuple[bool, str, str]]]] | None, ref_url: str,
                    etag: str | None, tokens: Collection[str]) -> bool:
    """Whether an If header (RFC 4918 §10.4) is true for the resource at ``ref_url``.

    ``if_lists`` is the header as ``util.parse_if_header_dict`` parsed it (tag ->
    lists of (not negated, "entity"|"locktoken", value); ``*`` for untagged lists),
    ``etag`` the resource's opaque tag or None (missing, or a folder: no entity-tag
    condition holds), ``tokens`` the lock tokens that cover it. True when no list
    applies to the resource (tags naming other resources are WsgiDAV's business, as
    before) or when any list that applies has every condition true. A lock token is
    true when a lock covering the resource has it — for a name that does not exist yet,
    the locks of its parents with Depth infinity.
    """
    if not if_lists:
        return True
    lists = if_lists.get(ref_url, if_lists.get("*"))
    if lists is None:
        return True
    for conditions in lists:
        holds = True
        for positive, kind, value in conditions:
            truth = (etag is not None and value == etag) if kind == "entity" else value in tokens
            if truth != positive:
                holds = False
                break
        if holds:
            return True
    return False


class PreconditionServer(RequestServer):
    """WsgiDAV's request server, with :func:`evaluate` and :func:`if_header_holds` in its
    precondition hook (``_evaluate_if_headers``, request_server.py:253), which its methods
    call after their own checks (404, 405, 409 … come first, RFC 9110 §13.2.1).

    The RFC 9110 fields apply to the request's target only (§13.1), not to a COPY/MOVE
    destination or the members a DELETE walks; the If header applies as RFC 4918 says,
    to each resource WsgiDAV asks about. A missing PUT, MKCOL or LOCK target is evaluated
    as a resource without validators. A 304 carries the ETag and Last-Modified of the
    200 (§15.4.5).
    """

    @classmethod
    def of(cls, server: RequestServer) -> PreconditionServer:
        """This class's server for the request ``server`` (a RequestServer) is handling:
        the same provider and settings."""
        if isinstance(server, cls):
            return server
        ours: PreconditionServer = cls.__new__(cls)
        ours.__dict__.update(server.__dict__)
        return ours

    def do_MKCOL(self, environ: dict[str, Any], start_response: Any) -> Any:
        """WsgiDAV's MKCOL, with the preconditions evaluated on the new name (it has
        none: request_server.py:587) once its own checks (415, 400, 405, 409) would pass."""
        path = environ["PATH_INFO"]
        provider = self._davProvider
        # WsgiDAV's own length reading, not framing.content_length: this predicts what
        # super().do_MKCOL will decide (http1.py has already refused a malformed value).
        if (util.get_content_length(environ) == 0 and environ.get("HTTP_DEPTH", "0") == "0"
                and not provider.exists(path, environ)):
            parent = provider.get_resource_inst(util.get_uri_parent(path), environ)
            if parent is not None and parent.is_collection:
                self._evaluate_if_headers(None, environ)
        return super().do_MKCOL(environ, start_response)

    def _evaluate_if_headers(self, res: Any, environ: dict[str, Any]) -> None:
        """Raise DAVError 412 or 304 when a precondition on ``res`` (None: missing) fails."""
        if "wsgidav.conditions.if" not in environ:
            util.parse_if_header_dict(environ)
        method = environ["REQUEST_METHOD"]
        provider = self._davProvider
        if res is None:
            if method not in ("PUT", "MKCOL", "LOCK"):
                return  # a missing COPY/MOVE destination: nothing to compare
            target, current = True, None
            ref_url = quote(provider.share_path + environ["PATH_INFO"])
        else:
            target = res.provider is provider and res.path == environ["PATH_INFO"]
            etag = res.get_etag()
            modified = res.get_last_modified()
            current = Validators(etag, None if modified is None else int(modified))
            ref_url = res.get_ref_url()
        if target:
            status = evaluate(method, environ, current)
            if status is not None:
                raise precondition_error(status, current or Validators(None, None))
        if "HTTP_IF" not in environ:
            return
        lock_man = provider.lock_manager
        tokens: list[str] = []
        if lock_man is not None:
            tokens = [lock["token"] for lock in lock_man.get_indirect_url_lock_list(
                ref_url, principal=environ["wsgidav.user_name"])]
        if not if_header_holds(environ["wsgidav.conditions.if"], ref_url, None if current is None else current.etag,
                               tokens):
            raise DAVError(HTTP_PRECONDITION_FAILED, "The If header condition failed.")
