"""Every public name of davserver/ has a docstring (issue 17, item 6): at most 2 % of the
public functions, classes and public methods of public classes may lack one.

A name is public when it does not start with ``_``. Counted per module of the package
(every module is imported, ``pkgutil.walk_packages``): the functions and classes the module
itself defines (not names it imports), and the methods, class and static methods and
properties a public class defines in its own body (dunder methods skipped). A method counts
as documented when ``inspect.getdoc`` finds a docstring, so an override of a documented
base-class method (ours or WsgiDAV's) inherits its text; a class must carry its own, since
``getdoc`` would hand an undocumented exception class the text of ``Exception``. What
dataclasses, Enum and NamedTuple generate is not ours: their methods are dunders or private
(``_make``, ``_asdict``), and the signature they write as a missing class docstring
(``Name(field: type, ...)``) is not counted as a docstring.

A docstring counts only with at least three words, so a placeholder that restates the name
does not meet the bar.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest

import davserver

MAX_MISSING_SHARE = 0.02
"""At most this share (2 %) of public names may lack a docstring."""

MIN_WORDS = 3


def _modules() -> list[ModuleType]:
    modules = [davserver]
    for info in pkgutil.walk_packages(davserver.__path__, prefix="davserver."):
        modules.append(importlib.import_module(info.name))
    return modules


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _class_doc(cls: type) -> str | None:
    """The class's own docstring, None for none or for the one dataclass/NamedTuple write."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str):
        return None
    if doc.startswith(f"{cls.__name__}("):  # dataclasses' and NamedTuple's generated signature
        return None
    if issubclass(cls, enum.Enum) and doc.strip() == "An enumeration.":
        return None
    return inspect.cleandoc(doc)


def _members(cls: type) -> Iterator[tuple[str, object]]:
    """(name, attribute as got from the class) of the public methods, class/static methods
    and properties ``cls`` defines in its own body."""
    for name, raw in vars(cls).items():
        if not _is_public(name) or _is_dunder(name):
            continue
        if isinstance(raw, (staticmethod, classmethod, property)) or inspect.isfunction(raw):
            yield name, getattr(cls, name, raw) if not isinstance(raw, property) else raw


def public_names() -> dict[str, str | None]:
    """qualified name (``module.Class.method``) -> docstring or None, for every public
    function, class and public method of a public class defined in davserver/."""
    found: dict[str, str | None] = {}
    seen: set[int] = set()
    for module in _modules():
        for name, obj in sorted(vars(module).items()):
            if not _is_public(name) or getattr(obj, "__module__", None) != module.__name__:
                continue
            if id(obj) in seen:  # an alias of a name already counted
                continue
            if inspect.isclass(obj):
                seen.add(id(obj))
                found[f"{module.__name__}.{name}"] = _class_doc(obj)
                for member, attr in _members(obj):
                    found[f"{module.__name__}.{name}.{member}"] = inspect.getdoc(attr)
            elif inspect.isfunction(obj):
                seen.add(id(obj))
                found[f"{module.__name__}.{name}"] = inspect.getdoc(obj)
    return found


def _lacking(names: dict[str, str | None]) -> list[str]:
    return sorted(q for q, doc in names.items() if doc is None or len(doc.split()) < MIN_WORDS)


def test_public_names_have_docstrings() -> None:
    names = public_names()
    missing = _lacking(names)
    allowed = int(len(names) * MAX_MISSING_SHARE)
    if len(missing) > allowed:
        pytest.fail(
            f"{len(missing)} of {len(names)} public names ({len(missing) / len(names):.1%}) lack a docstring "
            f"of at least {MIN_WORDS} words; at most {allowed} ({MAX_MISSING_SHARE:.0%}) may. Missing:\n  "
            + "\n  ".join(missing),
            pytrace=False,
        )


def test_the_count_sees_what_it_should() -> None:
    """The counter itself: it finds functions, classes, methods and properties, skips what
    is imported, private or generated, and refuses a placeholder docstring."""
    names = public_names()
    assert len(names) > 500
    assert "davserver.config.load_config" in names or any(q.startswith("davserver.config.") for q in names)
    assert not any(part.startswith("_") for q in names for part in q.split(".")), "a private name was counted"
    # an imported name is counted where it is defined, not again where it is imported
    assert not any(q.startswith("davserver.cli.Path") for q in names)
    # a placeholder is not a docstring
    assert _lacking({"m.f": "The f.", "m.g": None, "m.h": "Opens the store file."}) == ["m.f", "m.g"]
