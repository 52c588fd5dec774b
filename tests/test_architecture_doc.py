"""docs/architecture.md matches the code: every file it names exists, every ``module.name``
it names imports and resolves, every audit reason of its stage table is an
``access.Refusal``, and every module of ``davserver/`` is named on it at least once (so a
new module without its line on the page fails here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from davserver.access import Refusal
from davserver.settings_schema import setting

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "davserver"
PAGE = ROOT / "docs" / "architecture.md"

#: A file the page names: ``davserver/fs.py``, ``auth/core.py`` (under davserver/), ``tests/x.py``.
_PATH = re.compile(r"(?<![\w/.*-])([\w*]+(?:/[\w*]+)*\.py)\b")
#: A dotted name in backticks: ``guard.Guard``, ``auth.core.Authenticator.decide``.
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")
_FILE_SUFFIXES = (".yaml", ".yml", ".py", ".md", ".json", ".db", ".log", ".crt", ".key", ".pem")


def _modules() -> set[str]:
    """Every module file of the package, as a path relative to davserver/ (``auth/core.py``);
    the package's own empty ``__init__.py`` excepted."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")} - {"__init__.py"}


def _top_names() -> set[str]:
    """The first segment a davserver symbol may start with: ``guard``, ``auth``, ``store`` ..."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def resolve_path(name: str) -> list[Path]:
    """The files ``name`` (possibly a glob) stands for, from the repository root or from
    davserver/; empty when it names nothing."""
    for base in (ROOT, PACKAGE):
        found = sorted(base.glob(name)) if "*" in name else [base / name] if (base / name).is_file() else []
        if found:
            return found
    return []


def resolve_symbol(dotted: str) -> Any:
    """The object ``davserver.<dotted>`` names: the longest importable module prefix, then
    attributes. Raises ImportError or AttributeError when it names nothing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module("davserver." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no davserver module in {dotted!r}")


def is_setting(key: str) -> bool:
    """True when ``key`` is a davserver.yaml setting (``server.workers``)."""
    try:
        setting(key)
    except KeyError:
        return False
    return True


def named_paths(text: str) -> set[str]:
    """Every ``*.py`` path the text names (diagram included)."""
    return set(_PATH.findall(text))


def named_symbols(text: str) -> set[str]:
    """Every backticked dotted name whose first segment is a davserver module or package,
    other than a file name; setting keys are among them (``tls.client_ca``)."""
    tops = _top_names()
    found = set()
    for token in re.findall(r"`([^`\n]+)`", text):
        if _DOTTED.fullmatch(token) and not token.endswith(_FILE_SUFFIXES) and token.split(".")[0] in tops:
            found.add(token)
    return found


def stage_reasons(text: str) -> set[str]:
    """The backticked words of the last column ("refuses (audit reason)") of the stage table."""
    section = text.split("## The stages", 1)[1].split("\n## ", 1)[0]
    reasons = set()
    for line in section.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 5 and not set(cells[0].strip()) <= set("-") and cells[0].strip() != "stage":
            reasons.update(re.findall(r"`([a-z_]+)`", cells[4]))
    return reasons


def _module_file(dotted: str) -> str | None:
    """The module file (relative to davserver/) of the longest module prefix of ``dotted``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = PACKAGE.joinpath(*parts[:cut])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.relative_to(PACKAGE).as_posix()
    return None


def modules_named(text: str) -> set[str]:
    """The davserver modules the text names, as paths relative to davserver/: by file
    (``davserver/fs.py``, ``auth/core.py``) or by a symbol of theirs (``pki.PKIError``)."""
    named = set()
    for name in named_paths(text):
        for path in resolve_path(name):
            if path.is_relative_to(PACKAGE):
                named.add(path.relative_to(PACKAGE).as_posix())
    for dotted in named_symbols(text):
        module = None if is_setting(dotted) else _module_file(dotted)
        if module is not None:
            named.add(module)
    return named


TEXT = PAGE.read_text(encoding="utf-8")


def test_the_page_is_short() -> None:
    lines = len(TEXT.splitlines())
    assert 100 <= lines <= 260, lines


@pytest.mark.parametrize("name", sorted(named_paths(TEXT)))
def test_every_file_named_exists(name: str) -> None:
    assert resolve_path(name), f"docs/architecture.md names {name}, which does not exist"


@pytest.mark.parametrize("dotted", sorted(named_symbols(TEXT)))
def test_every_symbol_named_exists(dotted: str) -> None:
    if is_setting(dotted):
        return
    try:
        resolve_symbol(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"docs/architecture.md names `{dotted}`, which does not resolve: {exc}")


def test_every_stage_reason_is_a_refusal() -> None:
    reasons = stage_reasons(TEXT)
    assert len(reasons) > 40, reasons  # the table was parsed
    unknown = reasons - {r.value for r in Refusal}
    assert not unknown, f"not access.Refusal values: {sorted(unknown)}"


def test_every_module_is_named() -> None:
    missing = sorted(_modules() - modules_named(TEXT))
    assert not missing, f"docs/architecture.md has no line for: {missing}"


def test_the_checks_catch_what_is_wrong() -> None:
    """The twin of each check above: a made-up name of each kind is caught."""
    bad = "\n".join([
        "`davserver/no_such_module.py` and `fs.NoSuchThing` and `guard.Guard.no_such_method`",
        "## The stages",
        "| stage | module | decides | hands on | refuses (audit reason) |",
        "|---|---|---|---|---|",
        "| x | y | z | w | `no_such_reason`, `bad_path` |",
    ])
    assert not resolve_path("davserver/no_such_module.py")
    assert resolve_path("davserver/fs.py") and resolve_path("fs.py") and resolve_path("tests/conftest.py")
    symbols = named_symbols(bad)
    assert symbols == {"fs.NoSuchThing", "guard.Guard.no_such_method"}
    for dotted in symbols:
        with pytest.raises((ImportError, AttributeError)):
            resolve_symbol(dotted)
    assert resolve_symbol("auth.core.Authenticator.decide") is not None
    assert is_setting("server.workers") and not is_setting("server.no_such_key")
    assert stage_reasons(bad) == {"no_such_reason", "bad_path"}
    assert "fs.py" not in modules_named("only `guard.py` here") and "guard.py" in modules_named("`guard.py`")
    assert "auth/core.py" in modules_named("davserver/auth/core.py")
    assert "pki.py" in modules_named("`pki.PKIError`") and "server.py" not in modules_named("`server.workers`")
