"""WsgiDAV assembly: one filesystem provider per share and a root that lists
only the shares the signed-in account may see.

Authentication and access control happen before WsgiDAV (see guard.py), so
WsgiDAV's own HTTPAuthenticator is left out of its middleware stack: there is
exactly one place that says yes or no.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from wsgidav.dav_error import HTTP_NOT_FOUND, DAVError
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from .config import Config, ShareConfig
from .content_safety import ContentSafety
from .error_pages import ErrorPages
from .fs import ShareProvider
from .listing import Listing
from .request_context import request_context
from .store.base import StateStore
from .store.davstate import (
    LockBounds,
    LockOwnerFilter,
    PropertyBounds,
    RecordLimitReason,
    SharedWritesLockManager,
    SQLiteLockStorage,
    SQLitePropertyManager,
)
from .store.sqlite import SQLiteStore
from .upstream import DAVCollection, DAVProvider

__all__ = ["build_dav_app"]


_QUOTA_PROPS = ("{DAV:}quota-used-bytes", "{DAV:}quota-available-bytes")
#: The live properties the root listing gives of a share whose factors the request did
#: not prove (_ShareEntry.proven): none of them changes when the share is used.
_INERT_PROPS = frozenset({"{DAV:}resourcetype", "{DAV:}displayname", "{DAV:}getcontenttype"})


def _disk_figures(folder: os.PathLike[str] | str) -> tuple[int, int] | None:
    """(used, available) bytes of the filesystem holding ``folder``, from one statvfs
    (``shutil.disk_usage``: used = (blocks - free blocks) x fragment size, available =
    blocks available to unprivileged users x fragment size), or None when it cannot
    be read (a share folder missing). The same figures a share's own folders report
    on both PROPFIND paths (WsgiDAV's fs_dav_provider.py:209, fastpath.py)."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return usage.used, usage.free


class _QuotaMixin:
    """RFC 4331 quota properties as integers, or 404 for the property when there are none.

    WsgiDAV writes a ``None`` from ``get_used_bytes``/``get_available_bytes`` as an empty
    value with 200 when the property is named (dav_provider.py:733); RFC 4331 §3/§4 want
    an integer or the property absent, so a missing figure is answered 404 here."""

    def _figures(self) -> tuple[int, int] | None:
        raise NotImplementedError

    def get_used_bytes(self) -> int | None:
        figures = self._figures()
        return None if figures is None else figures[0]

    def get_available_bytes(self) -> int | None:
        figures = self._figures()
        return None if figures is None else figures[1]

    def get_property_value(self, name: str) -> Any:
        if name in _QUOTA_PROPS and self._figures() is None:
            raise DAVError(HTTP_NOT_FOUND)
        return super().get_property_value(name)  # type: ignore[misc]


class _ShareEntry(_QuotaMixin, DAVCollection):
    """A share as it appears in the root listing (its content is served by its own provider).

    Its quota properties are its folder's filesystem's figures (:func:`_disk_figures`), so
    a drive mapped at ``/`` sees each share's free space."""

    def __init__(self, path: str, environ: dict[str, Any], share: ShareConfig) -> None:
        super().__init__(path, environ)
        self.share = share
        self._quota: tuple[int, int] | None | bool = False

    def _figures(self) -> tuple[int, int] | None:
        if not self.proven():
            return None
        if self._quota is False:
            self._quota = _disk_figures(self.share.path)
        return self._quota  # type: ignore[return-value]

    def proven(self) -> bool:
        """Whether the request proved the share's factors (``RequestContext.factors``, set
        by guard.py). ``/`` asks for ``defaults.require`` only (access.required_factors), so
        for a share that needs more the root listing tells its name and kind only
        (:data:`_INERT_PROPS`): no quota, size, ETag, times or dead properties, which
        change with its use and are told by a request to the share itself."""
        return set(self.share.require) <= set(request_context(self.environ).factors)

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = DAVCollection.get_property_names(self, is_allprop=is_allprop)
        return names if self.proven() else [n for n in names if n in _INERT_PROPS]

    def get_property_value(self, name: str) -> Any:
        if not self.proven() and name not in _INERT_PROPS:
            raise DAVError(HTTP_NOT_FOUND)
        return super().get_property_value(name)

    def get_member_names(self) -> list[str]:
        return []

    def get_display_info(self) -> dict[str, str]:
        return {"type": "Share"}

    def get_last_modified(self) -> float | None:
        """The share folder's mtime (POSIX seconds), or None: only to a request that proved
        the share's factors (``RequestContext.factors``, set by guard.py). ``/`` asks for
        ``defaults.require`` only (access.required_factors), so a change inside a share that
        needs more is told by a request to that share, never by the root's listing."""
        if not self.proven():
            return None
        try:
            return os.stat(self.share.path).st_mtime
        except OSError:
            return None

    def prevent_locking(self) -> bool:
        return True


class _RootCollection(_QuotaMixin, DAVCollection):
    """``/``: the shares the account may see.

    Its quota properties are those of the visible share whose filesystem has the
    least space available (used bytes of that same filesystem): a client mapping
    ``/`` as one drive is never promised space that one of its shares lacks. With
    no visible share (or none readable) the properties are answered 404."""

    def __init__(self, environ: dict[str, Any], shares: dict[str, ShareConfig]) -> None:
        super().__init__("/", environ)
        self.shares = shares
        self._quota: tuple[int, int] | None | bool = False

    def _figures(self) -> tuple[int, int] | None:
        if self._quota is False:
            found = [f for name in self.get_member_names() if (f := _ShareEntry(
                "/" + name, self.environ, self.shares[name])._figures())]  # shares proven only
            self._quota = min(found, key=lambda f: f[1]) if found else None
        return self._quota  # type: ignore[return-value]

    def get_member_names(self) -> list[str]:
        visible = request_context(self.environ).visible_shares
        return [name for name in sorted(self.shares) if name in visible]

    def get_member(self, name: str) -> _ShareEntry | None:
        if name not in self.get_member_names():
            return None
        return _ShareEntry("/" + name, self.environ, self.shares[name])

    def get_display_info(self) -> dict[str, str]:
        return {"type": "Shares"}

    def prevent_locking(self) -> bool:
        return True


class RootProvider(DAVProvider):
    """Read-only virtual collection at '/': Explorer and Finder walk from here."""

    def __init__(self, shares: dict[str, ShareConfig]) -> None:
        super().__init__()
        self.shares = shares

    def is_readonly(self) -> bool:
        """Always True: nothing can be written at ``/``. WsgiDAV reads it for the methods
        OPTIONS offers (wsgidav/request_server.py:1527-1550, only OPTIONS/HEAD/GET/PROPFIND)
        and for the ``DAV:`` compliance class (request_resolver.py:194-199, class 1)."""
        return True

    def get_resource_inst(self, path: str | None, environ: dict[str, Any]) -> DAVCollection | None:
        """``/``, a share's entry in it, or None. ``path`` None (the parent of ``/``, which
        WsgiDAV asks for on COPY/MOVE, util.get_uri_parent) names nothing."""
        self._count_get_resource_inst += 1
        if path is None:
            return None
        root = _RootCollection(environ, self.shares)
        if path in ("", "/"):
            return root
        return root.get_member(path.strip("/")) if path.count("/") <= 1 or path.endswith("/") else None


def _dav_state(config: Config, store: StateStore) -> tuple[Any, Any]:
    """Lock storage and property manager on the same backend as the state store, with their bounds."""
    lk, pr = config.locks, config.properties
    timeout = lk.max_timeout_seconds
    locks = LockBounds(per_resource=lk.max_per_resource, per_account=lk.max_per_account,
                       owner_bytes=lk.max_owner_bytes)
    props = PropertyBounds(value_bytes=pr.max_value_bytes, per_resource=pr.max_per_resource,
                           bytes_per_resource=pr.max_bytes_per_resource, answer_bytes=pr.max_propfind_bytes,
                           answer_names=pr.max_propfind_names)
    if isinstance(store, SQLiteStore):
        return SQLiteLockStorage(store, max_timeout=timeout, bounds=locks), SQLitePropertyManager(store, bounds=props)
    from .store.redis import RedisStore
    from .store.redis_davstate import RedisLockStorage, RedisPropertyManager

    assert isinstance(store, RedisStore)
    return (RedisLockStorage(store, max_timeout=timeout, bounds=locks, write_mark_seconds=lk.write_mark_seconds),
            RedisPropertyManager(store, bounds=props))


def build_dav_app(config: Config, store: StateStore) -> WsgiDAVApp:
    """WsgiDAV over the shares; WebDAV locks and dead properties live in the state store."""
    lock_storage, property_manager = _dav_state(config, store)
    mapping: dict[str, DAVProvider] = {"/": RootProvider(dict(config.shares))}
    for name, share in config.shares.items():
        mapping["/" + name] = ShareProvider(share, max_tree_depth=config.limits.max_tree_depth,
                                            checksums=config.properties.checksums)
    app = WsgiDAVApp(
        {
            "provider_mapping": mapping,
            "middleware_stack": [
                ErrorPages, Listing, ContentSafety, LockOwnerFilter, RecordLimitReason, RequestResolver,
            ],
            "http_authenticator": {"domain_controller": None, "accept_basic": False, "accept_digest": False},
            "property_manager": property_manager,
            "lock_storage": lock_storage,
            "verbose": 1,
            "logging": {"enable": False},
            "suppress_version_info": True,
            "add_header_MS_Author_Via": True,
            # 256 KiB blocks for bodies WsgiDAV streams (ranges, PUT): 8 KiB ones cost a
            # Python round trip and a TLS record each.
            "block_size": 1 << 18,
            "dir_browser": {"enable": False},
        }
    )
    if app.lock_manager is not None:  # WsgiDAV builds it; only its marks of writes in flight change
        app.lock_manager.__class__ = SharedWritesLockManager
    return app
