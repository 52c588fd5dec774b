"""Every public name of davserver/ has a docstring (issue 17, item 6): at most 2 % of the
public functions, classes and public methods of public classes may lack one.

A name is public when it does not start with ``_``. Counted per module of the package
(every module is imported, ``pkgutil.walk_packages``): the functions and classes the module
itself defines (not names it imports), and the methods, class and static methods and
properties a public class defines in its own body (dunder methods skipped), and the
commands of the CLI (a click command is an object around its function, whose docstring is
the command's help). A method counts
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
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import click
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
    function, class, public method of a public class and CLI command defined in davserver/."""
    found: dict[str, str | None] = {}
    seen: set[int] = set()
    for module in _modules():
        for name, obj in sorted(vars(module).items()):
            if not _is_public(name) or id(obj) in seen:  # id: an alias of a name already counted
                continue
            defined_in = getattr(obj.callback if isinstance(obj, click.Command) else obj, "__module__", None)
            if defined_in != module.__name__:  # imported, not ours here
                continue
            if inspect.isclass(obj):
                seen.add(id(obj))
                found[f"{module.__name__}.{name}"] = _class_doc(obj)
                for member, attr in _members(obj):
                    found[f"{module.__name__}.{name}.{member}"] = inspect.getdoc(attr)
            elif inspect.isfunction(obj):
                seen.add(id(obj))
                found[f"{module.__name__}.{name}"] = inspect.getdoc(obj)
            elif isinstance(obj, click.Command):
                seen.add(id(obj))
                found[f"{module.__name__}.{name}"] = inspect.getdoc(obj.callback)
    return found


def _lacking(names: dict[str, str | None]) -> list[str]:
    return sorted(q for q, doc in names.items() if doc is None or len(doc.split()) < MIN_WORDS)


def _module_of(qualified: str) -> str:
    """The module part of ``davserver.x.Class.method``: its longest prefix that is a module."""
    parts = qualified.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in sys.modules)


def test_public_names_have_docstrings() -> None:
    names = public_names()
    missing = _lacking(names)
    allowed = int(len(names) * MAX_MISSING_SHARE)
    if len(missing) > allowed:
        per_module = Counter(_module_of(q) for q in missing)
        pytest.fail(
            f"{len(missing)} of {len(names)} public names ({len(missing) / len(names):.1%}) lack a docstring "
            f"of at least {MIN_WORDS} words; at most {allowed} ({MAX_MISSING_SHARE:.0%}) may.\n"
            "By module: "
            + ", ".join(f"{m} {n}" for m, n in per_module.most_common())
            + "\nMissing:\n  "
            + "\n  ".join(missing),
            pytrace=False,
        )


def test_the_count_sees_what_it_should() -> None:
    """The counter itself: it finds functions, classes, methods, properties and CLI
    commands, skips what is imported, private, dunder or generated, and refuses a
    placeholder docstring, so the bar above cannot be met by counting less."""
    names = public_names()
    assert len(names) > 500
    for counted in (
        "davserver.config.load_config",  # a function
        "davserver.config.Home",  # a class
        "davserver.config.Home.resolve",  # a method
        "davserver.config.Home.config_file",  # a property
        "davserver.cli.user_list",  # a click command
    ):
        assert counted in names, counted
    assert not any(part.startswith("_") for q in names for part in q.split(".")), "a private or dunder name was counted"
    # an imported name is counted where it is defined, not again where it is imported
    assert "davserver.accounts.ConfigError" not in names
    assert "davserver.config.ConfigError" in names


def test_the_count_refuses_placeholders_and_generated_text() -> None:
    """What dataclasses and exceptions get without a docstring of their own is none, and
    fewer than three words is none."""

    @dataclass(frozen=True)
    class Settings:
        port: int = 0

    class Failure(Exception):
        pass

    class Named(NamedTuple):
        a: int

    class Documented:
        """Holds the settings of one listener."""

    assert Settings.__doc__ and Failure.__doc__ is None and Named.__doc__  # what Python gives them
    assert _class_doc(Settings) is None
    assert _class_doc(Failure) is None  # not Exception's text through inspect.getdoc
    assert _class_doc(Named) is None
    assert _class_doc(Documented) == "Holds the settings of one listener."
    assert _lacking({"m.f": "The f.", "m.g": None, "m.h": "Opens the store file."}) == ["m.f", "m.g"]
