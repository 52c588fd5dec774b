"""Every private WsgiDAV / cheroot name davserver relies on, in one list, checked against
the installed versions: an upgrade that renames or drops one fails here, naming the
file:line of each use, instead of failing in production.

``PRIVATE`` is the list (one entry per name, a comment naming the davserver file that
relies on it). ``test_the_list_is_complete`` scans davserver/ so a new use cannot be
added without an entry:

* ``obj._name`` where ``obj`` is not ``self``/``cls`` and davserver defines no ``_name``;
* ``self._name`` inside a class deriving from a WsgiDAV / cheroot class (or the
  ``_pyio`` classes cheroot's buffered files derive from) whose upstream code has it;
* a method ``_name`` defined in such a class that overrides an upstream one;
* ``from wsgidav…/cheroot… import _name``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"
UPSTREAM = ("wsgidav", "cheroot", "_pyio")


@dataclass(frozen=True)
class Private:
    """``owner`` (``module:Class`` or ``module``) must have ``name``; ``kind`` says how:
    ``attr`` — the class or module has it; ``instance`` — set on instances by the class's
    own code (``self.<name> =`` in its source or a base's); ``reads`` — the upstream code
    reads ``self.<name>``, which davserver sets or overrides. ``files``: the davserver
    files that rely on it."""

    owner: str
    name: str
    kind: str
    files: tuple[str, ...]


PRIVATE = [
    # copymove.py runs a copy of this function with two of its globals replaced.
    Private("wsgidav.request_server:RequestServer", "_copy_or_move", "attr", ("copymove.py",)),
    # copymove.py: the two globals of _copy_or_move it replaces (unquote, urlparse).
    Private("wsgidav.request_server", "unquote", "attr", ("copymove.py",)),
    Private("wsgidav.request_server", "urlparse", "attr", ("copymove.py",)),
    # copymove.py and conditions.py read the provider of the request being served.
    Private("wsgidav.request_server:RequestServer", "_davProvider", "instance", ("copymove.py", "conditions.py")),
    # copymove.py calls it for COPY/MOVE across shares; conditions.py overrides it.
    Private("wsgidav.request_server:RequestServer", "_evaluate_if_headers", "attr",
            ("copymove.py", "conditions.py")),
    # copymove.py checks WebDAV locks for COPY/MOVE across shares with it.
    Private("wsgidav.request_server:RequestServer", "_check_write_permission", "attr", ("copymove.py",)),
    # fs.py sets and reads it on its resources (the pinned GET, new files); copymove.py reads it.
    Private("wsgidav.fs_dav_provider:FileResource", "_file_path", "instance", ("fs.py", "copymove.py")),
    Private("wsgidav.fs_dav_provider:FolderResource", "_file_path", "instance", ("fs.py",)),
    # fs.py overrides it (confinement); WsgiDAV's resources call it; fastpath.py, copymove.py too.
    Private("wsgidav.fs_dav_provider:FilesystemProvider", "_loc_to_file_path", "attr",
            ("fs.py", "fastpath.py", "copymove.py")),
    # fs.py checks that a symlink inside a share stays inside with it.
    Private("wsgidav.fs_dav_provider:FilesystemProvider", "_is_equal_or_child_path", "attr", ("fs.py",)),
    # fs.py and dav.py count lookups as WsgiDAV's own get_resource_inst does.
    Private("wsgidav.dav_provider:DAVProvider", "_count_get_resource_inst", "instance", ("fs.py", "dav.py")),
    # store/davstate.py's SharedWritesLockManager marks writes in flight as WsgiDAV does,
    # under WsgiDAV's own lock, before keeping the mark in the state store.
    Private("wsgidav.lock_man.lock_manager:LockManager", "_begin_write_transaction", "attr", ("store/davstate.py",)),
    Private("wsgidav.lock_man.lock_manager:LockManager", "_end_write_transaction", "attr", ("store/davstate.py",)),
    Private("wsgidav.lock_man.lock_manager:LockManager", "_lock", "instance", ("store/davstate.py",)),
    # tls.py sets it without running the base __init__ (which loads files); get_environ reads it.
    Private("cheroot.ssl.builtin:BuiltinSSLAdapter", "_server_env", "reads", ("tls.py",)),
    # tls.py fills large reads in place from the pure-Python reader's buffer state.
    Private("cheroot.makefile:StreamReader", "_read_buf", "reads", ("tls.py",)),
    Private("cheroot.makefile:StreamReader", "_read_pos", "reads", ("tls.py",)),
    Private("cheroot.makefile:StreamReader", "_read_lock", "reads", ("tls.py",)),
    # tls.py's writer refuses writes to a closed file as the base does.
    Private("cheroot.makefile:StreamWriter", "_checkClosed", "attr", ("tls.py",)),
]

def _resolve(owner: str) -> object:
    module, _, cls = owner.partition(":")
    obj: object = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def _source(cls: type) -> str:
    return "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__.split(".")[0] in UPSTREAM)


def _uses(entry: Private) -> list[str]:
    """file:line of every use of ``entry.name`` in its files (``.name``, ``def name``, or
    for a module global the name itself)."""
    pattern = re.compile(rf"(\.|def |\b){re.escape(entry.name)}\b")
    out = []
    for file in entry.files:
        for lineno, line in enumerate((PACKAGE / file).read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                out.append(f"davserver/{file}:{lineno}")
    return out


def _present(entry: Private) -> bool:
    obj = _resolve(entry.owner)
    if entry.kind == "attr":
        return hasattr(obj, entry.name)
    assert isinstance(obj, type), entry
    src = _source(obj)
    if entry.kind == "instance":
        return re.search(rf"self\.{re.escape(entry.name)}\s*(:[^=\n]*)?[+]?=", src) is not None
    return re.search(rf"self\.{re.escape(entry.name)}\b", src) is not None  # reads


@pytest.mark.parametrize("entry", PRIVATE, ids=lambda e: f"{e.owner}.{e.name}")
def test_each_private_name_still_exists_upstream(entry: Private) -> None:
    uses = _uses(entry)
    assert uses, f"no use of {entry.name} left in {entry.files}: drop the entry"
    assert _present(entry), (f"{entry.owner} no longer has {entry.name} ({entry.kind}) in the installed version; "
                             f"davserver relies on it at: " + ", ".join(uses))


def test_the_check_notices_a_missing_name() -> None:
    """The twin: an entry naming what upstream does not have is reported absent."""
    for kind in ("attr", "instance", "reads"):
        assert not _present(Private("wsgidav.fs_dav_provider:FileResource", "_no_such_name", kind, ("fs.py",)))
    assert not _present(Private("wsgidav.request_server", "_no_such_global", "attr", ("copymove.py",)))


def _defined_in_davserver() -> set[str]:
    """Attribute names davserver's own classes and objects have: methods and class-level
    names of its classes, and every ``x.name = ...``."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "upstream.py":  # its classes declare upstream names for mypy, they define none
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign | ast.Assign):
                        targets = [item.target] if isinstance(item, ast.AnnAssign) else item.targets
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return names


def _relied_on() -> dict[str, list[str]]:
    """name -> file:line of each use, by the rules in the module docstring."""
    ours = _defined_in_davserver()
    found: dict[str, list[str]] = {}

    def note(name: str, path: Path, line: int) -> None:
        found.setdefault(name, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")

    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = importlib.import_module(".".join(p for p in rel.parts if p != "__init__"))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UPSTREAM:
                for alias in node.names:
                    if alias.name.startswith("_"):
                        note(alias.name, path, node.lineno)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if not (isinstance(base, ast.Name) and base.id in ("self", "cls")) and node.attr not in ours:
                    note(node.attr, path, node.lineno)
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if not isinstance(cls, type) or not any(c.__module__.split(".")[0] in UPSTREAM for c in cls.__mro__[1:]):
                continue
            upstream = set(re.findall(r"\b_[A-Za-z]\w*", _source(cls)))
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef) and inner.name.startswith("_") \
                        and not inner.name.startswith("__") and inner.name in upstream:
                    note(inner.name, path, inner.lineno)
                if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id == "self" \
                        and inner.attr.startswith("_") and not inner.attr.startswith("__") and inner.attr in upstream:
                    note(inner.attr, path, inner.lineno)
    return found


def test_the_list_is_complete() -> None:
    listed = {e.name for e in PRIVATE}
    relied = _relied_on()
    missing = {name: uses for name, uses in relied.items() if name not in listed}
    assert not missing, "private upstream names used but not in PRIVATE: " + "; ".join(
        f"{name} at {', '.join(uses[:3])}" for name, uses in sorted(missing.items()))
    assert {"_copy_or_move", "_file_path", "_read_buf"} <= set(relied)  # the scan sees uses
