"""WsgiDAV assembly: one filesystem provider per share and a root that lists
only the shares the signed-in account may see.

Authentication and access control happen before WsgiDAV (see guard.py), so
WsgiDAV's own HTTPAuthenticator is left out of its middleware stack: there is
exactly one place that says yes or no.
"""

from __future__ import annotations

import os
from typing import Any

from wsgidav.dav_provider import DAVCollection, DAVProvider
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from .config import Config, ShareConfig
from .content_safety import ContentSafety
from .error_pages import ErrorPages
from .fs import ShareProvider
from .listing import Listing
from .store.base import StateStore
from .store.davstate import (
    LockBounds,
    LockOwnerFilter,
    PropertyBounds,
    RecordLimitReason,
    SQLiteLockStorage,
    SQLitePropertyManager,
)
from .store.sqlite import SQLiteStore

__all__ = ["VISIBLE_SHARES_KEY", "build_dav_app"]

#: The guard puts the names of the shares the account may read here.
VISIBLE_SHARES_KEY = "davserver.visible_shares"


class _ShareEntry(DAVCollection):
    """A share as it appears in the root listing (its content is served by its own provider)."""

    def __init__(self, path: str, environ: dict[str, Any], share: ShareConfig) -> None:
        super().__init__(path, environ)
        self.share = share

    def get_member_names(self) -> list[str]:
        return []

    def get_display_info(self) -> dict[str, str]:
        return {"type": "Share"}

    def get_last_modified(self) -> float | None:
        try:
            return os.stat(self.share.path).st_mtime
        except OSError:
            return None

    def prevent_locking(self) -> bool:
        return True


class _RootCollection(DAVCollection):
    def __init__(self, environ: dict[str, Any], shares: dict[str, ShareConfig]) -> None:
        super().__init__("/", environ)
        self.shares = shares

    def get_member_names(self) -> list[str]:
        visible = self.environ.get(VISIBLE_SHARES_KEY, ())
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
    locks = LockBounds(per_resource=lk.max_per_resource, per_account=lk.max_per_account)
    props = PropertyBounds(value_bytes=pr.max_value_bytes, per_resource=pr.max_per_resource,
                           bytes_per_resource=pr.max_bytes_per_resource, answer_bytes=pr.max_propfind_bytes)
    if isinstance(store, SQLiteStore):
        return SQLiteLockStorage(store, max_timeout=timeout, bounds=locks), SQLitePropertyManager(store, bounds=props)
    from .store.redis import RedisStore
    from .store.redis_davstate import RedisLockStorage, RedisPropertyManager

    assert isinstance(store, RedisStore)
    return RedisLockStorage(store, max_timeout=timeout, bounds=locks), RedisPropertyManager(store, bounds=props)


def build_dav_app(config: Config, store: StateStore) -> WsgiDAVApp:
    """WsgiDAV over the shares; WebDAV locks and dead properties live in the state store."""
    lock_storage, property_manager = _dav_state(config, store)
    mapping: dict[str, DAVProvider] = {"/": RootProvider(dict(config.shares))}
    for name, share in config.shares.items():
        mapping["/" + name] = ShareProvider(share, max_tree_depth=config.limits.max_tree_depth)
    return WsgiDAVApp(
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
