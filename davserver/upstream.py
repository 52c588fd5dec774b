"""The typed boundary to WsgiDAV 4.4.0 (untyped: no ``py.typed``).

davserver subclasses a few WsgiDAV classes and calls a few of its functions whose results
flow into typed code. Those names are imported from here, not from ``wsgidav``: at run
time they ARE the WsgiDAV objects (re-exported unchanged, no wrapper, no extra call);
under a type checker they are the typed declarations below, limited to what davserver
uses, with the signatures of the WsgiDAV 4.4.0 sources named next to each. An upgrade
that changes one of these signatures changes this file and nothing else.

cheroot 11.1.2 ships stubs (``cheroot/*.pyi``) that leave the methods davserver calls
untyped; :class:`HTTPConnection`, :class:`HTTPServer`, :class:`WSGIServer` and
:class:`StreamReader` here are cheroot's classes at run time and, to the type checker,
subclasses of them that give those methods their types (cheroot/server.py,
cheroot/makefile.py). prometheus_client and redis-py are only called: pyproject.toml lets
mypy accept their untyped functions (``untyped_calls_exclude``); the one redis-py class
davserver subclasses, ``Sentinel``, has its typed view in store/redis.py, so that only
Redis users import redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

Environ = dict[str, Any]
"""A WSGI environ (PEP 3333)."""
StartResponse = Callable[..., Any]
"""A WSGI ``start_response`` callable (PEP 3333)."""
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
"""A WSGI application (PEP 3333)."""

if TYPE_CHECKING:
    import os
    import socket

    from cheroot import makefile as _makefile
    from cheroot import server as _server
    from cheroot import wsgi as _wsgi

    class StreamReader(_makefile.StreamReader):
        """cheroot/makefile.py ``StreamReader`` (an ``io.BufferedReader``)."""

        def read(self, size: int | None = -1) -> bytes: ...

    class HTTPConnection(_server.HTTPConnection):
        """cheroot/server.py ``HTTPConnection``."""

        def communicate(self) -> bool | None: ...

    class HTTPServer(_server.HTTPServer):
        """cheroot/server.py ``HTTPServer``."""

        @classmethod
        def prepare_socket(cls, bind_addr: Any, family: int, type: int, proto: int, nodelay: bool,
                           ssl_adapter: Any, reuse_port: bool = False) -> socket.socket: ...

        @staticmethod
        def resolve_real_bind_addr(socket_: socket.socket) -> Any: ...

    class WSGIServer(_wsgi.Server, HTTPServer):
        """cheroot/wsgi.py ``Server``."""

    HTTP_NOT_MODIFIED: int
    HTTP_PRECONDITION_FAILED: int

    class DAVError(Exception):
        """wsgidav/dav_error.py:189."""

        value: int
        context_info: str | None
        err_condition: Any
        add_headers: list[tuple[str, str]] | None

        def __init__(self, status_code: int, context_info: str | None = None, *,
                     src_exception: BaseException | None = None, err_condition: Any = None,
                     add_headers: list[tuple[str, str]] | None = None) -> None: ...

        def get_user_info(self) -> str: ...

        def get_response_page(self) -> tuple[str, bytes]: ...

    class BaseMiddleware:
        """wsgidav/mw/base_mw.py:12."""

        wsgidav_app: Any
        next_app: WsgiApp
        config: dict[str, Any]

        def __init__(self, wsgidav_app: Any, next_app: WsgiApp, config: dict[str, Any]) -> None: ...

        def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...

    class RequestServer:
        """wsgidav/request_server.py:47."""

        _davProvider: Any

        def __init__(self, dav_provider: Any) -> None: ...

        def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...

        def do_MKCOL(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...

        def _evaluate_if_headers(self, res: Any, environ: Environ) -> None: ...

        def _check_write_permission(self, res: Any, depth: str, environ: Environ) -> None: ...

    class _DAVResource:
        """wsgidav/dav_provider.py:123 (what davserver calls or overrides)."""

        path: str
        provider: Any
        environ: Environ
        is_collection: bool
        name: str

        def __init__(self, path: str, is_collection: bool, environ: Environ) -> None: ...

        def get_content_length(self) -> int | None: ...

        def get_display_name(self) -> str: ...

        def get_display_info(self) -> dict[str, str]: ...

        def get_etag(self) -> str | None: ...

        def get_last_modified(self) -> float | None: ...

        def get_property_names(self, *, is_allprop: bool) -> list[str]: ...

        def get_property_value(self, name: str) -> Any: ...

        def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any: ...

        def remove_all_properties(self, *, recursive: bool) -> None: ...

        def remove_all_locks(self, *, recursive: bool) -> None: ...

        def get_preferred_path(self) -> str: ...

        def get_ref_url(self) -> str: ...

        def get_href(self) -> str: ...

        def get_member_list(self) -> list[Any]: ...

        def get_member_names(self) -> list[str]: ...

        def get_descendants(self, *, collections: bool = True, resources: bool = True,
                            depth_first: bool = False, depth: str = "infinity",
                            add_self: bool = False) -> list[Any]: ...

        def prevent_locking(self) -> bool: ...

        def get_content(self) -> Any: ...

        def begin_write(self, *, content_type: str | None = None) -> Any: ...

        def end_write(self, *, with_errors: bool) -> None: ...

        def handle_delete(self) -> bool: ...

        def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool: ...

        def handle_move(self, dest_path: str) -> bool: ...

        def delete(self) -> None: ...

        def copy_move_single(self, dest_path: str, *, is_move: bool) -> None: ...

        def move_recursive(self, dest_path: str) -> None: ...

        def create_empty_resource(self, name: str) -> Any: ...

        def create_collection(self, name: str) -> Any: ...

        def get_member(self, name: str) -> Any: ...

        def resolve(self, script_name: str, path_info: str) -> Any: ...

    class DAVNonCollection(_DAVResource):
        """wsgidav/dav_provider.py:1218."""

        def __init__(self, path: str, environ: Environ) -> None: ...

    class DAVCollection(_DAVResource):
        """wsgidav/dav_provider.py:1319."""

        def __init__(self, path: str, environ: Environ) -> None: ...

    class FileResource(DAVNonCollection):
        """wsgidav/fs_dav_provider.py:38."""

        _file_path: str
        file_stat: os.stat_result

        def __init__(self, path: str, environ: Environ, file_path: str) -> None: ...

    class FolderResource(DAVCollection):
        """wsgidav/fs_dav_provider.py:181."""

        _file_path: str
        file_stat: os.stat_result

        def __init__(self, path: str, environ: Environ, file_path: str) -> None: ...

    class DAVProvider:
        """wsgidav/dav_provider.py:1506."""

        mount_path: str
        share_path: str
        lock_manager: Any
        prop_manager: Any
        _count_get_resource_inst: int

        def __init__(self) -> None: ...

        def is_readonly(self) -> bool: ...

        def get_resource_inst(self, path: str, environ: Environ) -> Any: ...

        def exists(self, path: str, environ: Environ) -> bool: ...

        def is_collection(self, path: str, environ: Environ) -> bool: ...

    class FilesystemProvider(DAVProvider):
        """wsgidav/fs_dav_provider.py:377."""

        root_folder_path: str
        root_folder_path_real: str
        readonly: bool
        fs_opts: dict[str, Any]

        def __init__(self, root_folder: str, *, readonly: bool = False,
                     fs_opts: dict[str, Any] | None = None) -> None: ...

        @staticmethod
        def _is_equal_or_child_path(root_path: str, file_path: str) -> bool: ...

        def _loc_to_file_path(self, path: str, environ: Environ | None = None) -> str: ...

    class LockManager:
        """wsgidav/lock_man/lock_manager.py:121."""

        storage: Any
        _lock: Any

        def __init__(self, storage: Any) -> None: ...

        def _check_lock_permission(self, url: str, lock_type: str, lock_scope: str,
                                   lock_depth: str, token_list: list[str], principal: str) -> None: ...

        def acquire(self, *, url: str, lock_type: str, lock_scope: str, lock_depth: str,
                    lock_owner: str, timeout: float | None, principal: str,
                    token_list: list[str]) -> dict[str, Any]: ...

        def refresh(self, token: str, *, timeout: float | None = None) -> dict[str, Any] | None: ...

        def get_lock(self, token: str, *, key: str | None = None) -> Any: ...

        def release(self, token: str) -> None: ...

        def _begin_write_transaction(self, *, url: str, token_list: Any, principal: str,
                                     depth: str = "0") -> None: ...

        def _end_write_transaction(self, url: str) -> None: ...

        def write_transaction(self, *, url: str, token_list: Any, principal: str,
                              depth: str = "0") -> AbstractContextManager[None]: ...

        def is_token_locked_by_user(self, token: str, principal: str) -> bool: ...

        def get_url_lock_list(self, url: str, *, recursive: bool = False) -> list[dict[str, Any]]: ...

        def get_indirect_url_lock_list(self, url: str, *, principal: str | None = None) -> list[dict[str, Any]]: ...

    def send_status_response(environ: Environ, start_response: StartResponse, e: int | DAVError, *,
                             add_headers: list[tuple[str, str]] | None = None,
                             is_head: bool = False) -> list[bytes]:
        """wsgidav/util.py:1256."""

    def get_rfc1123_time(secs: float | None = None) -> str:
        """wsgidav/util.py:321."""

    def generate_lock_token() -> str:
        """wsgidav/lock_man/lock_manager.py:63."""

    def normalize_lock_root(path: str) -> str:
        """wsgidav/lock_man/lock_manager.py:67."""

    def validate_lock(lock: dict[str, Any]) -> None:
        """wsgidav/lock_man/lock_manager.py:103."""

    def xml_to_bytes(element: Any, *, pretty: bool = False) -> bytes:
        """wsgidav/xml_tools.py:69."""
else:
    from cheroot.makefile import StreamReader
    from cheroot.server import HTTPConnection, HTTPServer
    from cheroot.wsgi import Server as WSGIServer
    from wsgidav.dav_error import HTTP_NOT_MODIFIED, HTTP_PRECONDITION_FAILED, DAVError
    from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
    from wsgidav.fs_dav_provider import FileResource, FilesystemProvider, FolderResource
    from wsgidav.lock_man.lock_manager import LockManager, generate_lock_token, normalize_lock_root, validate_lock
    from wsgidav.mw.base_mw import BaseMiddleware
    from wsgidav.request_server import RequestServer
    from wsgidav.util import get_rfc1123_time, send_status_response
    from wsgidav.xml_tools import xml_to_bytes

__all__ = [
    "BaseMiddleware",
    "DAVCollection",
    "DAVError",
    "DAVNonCollection",
    "DAVProvider",
    "Environ",
    "FileResource",
    "FilesystemProvider",
    "FolderResource",
    "HTTPConnection",
    "HTTPServer",
    "HTTP_NOT_MODIFIED",
    "HTTP_PRECONDITION_FAILED",
    "LockManager",
    "RequestServer",
    "StartResponse",
    "StreamReader",
    "WSGIServer",
    "WsgiApp",
    "generate_lock_token",
    "get_rfc1123_time",
    "normalize_lock_root",
    "send_status_response",
    "validate_lock",
    "xml_to_bytes",
]
