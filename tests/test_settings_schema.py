"""One schema (davserver/settings_schema.py) defines every setting; the loader, the shipped
davserver.yaml and the README's table are held to it, so none can drift from the others."""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from davserver import config as config_module
from davserver.config import Config, ConfigError, Home, load_config, parse_config
from davserver.instance import default_config_text
from davserver.settings_schema import SECTIONS, SETTINGS, Setting, keys_of, render_readme_table, setting

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = yaml.safe_load(default_config_text())
NUMBERS = [s for s in SETTINGS if s.type in ("int", "float")]


def _readme_rows(text: str) -> dict[str, tuple[str, str]]:
    """key -> (default cell, meaning) of the README's configuration table."""
    table = text.split("## Configuration reference", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        m = re.match(r"^\| `([A-Za-z_.]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            assert m.group(1) not in rows, f"README.md documents {m.group(1)} twice"
            rows[m.group(1)] = (m.group(2), m.group(3))
        elif rows and not line.startswith("|"):
            break
    return rows


def _readme_drift(text: str) -> list[str]:
    """What in the README's table differs from the schema, one line per key."""
    rows = _readme_rows(text)
    found = [f"{k}: documented, but the loader refuses it" for k in rows if k not in {s.key for s in SETTINGS}]
    for s in SETTINGS:
        if s.key not in rows:
            found.append(f"{s.key}: not documented")
            continue
        cell, meaning = rows[s.key]
        expected = "—" if s.default_text() == "—" else f"`{s.default_text()}`"
        if cell != expected:
            found.append(f"{s.key}: default {cell}, the schema's is {expected}")
        if meaning != s.doc:
            found.append(f"{s.key}: meaning differs from the schema's doc")
    if not found and render_readme_table() not in text:
        found.append("the table's order or header differs from the schema's")
    return found


def _comments(text: str) -> dict[str, list[str]]:
    """section -> the comment lines written under it (and right above it) in the file."""
    comments: dict[str, list[str]] = {}
    section, above = "", list[str]()  # comments at column 0 belong to the section they precede
    for line in text.splitlines():
        if re.match(r"^[a-z]+:", line):
            section = line.split(":")[0]
            comments[section] = above
            above = []
        elif line.startswith("#"):
            above.append(line)
        elif section and line.lstrip().startswith("#"):
            comments[section].append(line)
    return comments


#: Settings the shipped file leaves unset (derived defaults, or only for the Redis backend):
#: it names each in a comment instead.
UNSET = {"enrolment.bind", "enrolment.url", "state.password_file", "state.prefix", "state.url"}


def _yaml_drift(text: str) -> list[str]:
    """What in a davserver.yaml text differs from the schema, one line per key."""
    raw = yaml.safe_load(text)
    comments = _comments(text)
    found = [f"{k}: not a section" for k in raw if k not in SECTIONS]
    for section, body in raw.items():
        if section == "shares":  # an example share
            found += [f"shares.{n}.{k}: not a share key" for n, share in body.items()
                      for k in share if k not in keys_of("shares.NAME")]
            continue
        for name, value in (body or {}).items():
            key = f"{section}.{name}"
            if section not in SECTIONS or name not in keys_of(section):
                found.append(f"{key}: not a setting")
                continue
            expected = setting(key).default
            expected = list(expected) if isinstance(expected, tuple) else expected
            if value != expected or isinstance(value, bool) != isinstance(expected, bool):
                found.append(f"{key}: {value!r}, the schema's default is {expected!r}")
    for s in SETTINGS:
        section = s.key.partition(".")[0]
        if section == "shares" or s.key in UNSET:  # documented in comments only
            if not any(re.search(rf"\b{s.name}\b", line) for line in comments.get(section, [])):
                found.append(f"{s.key}: not explained in a comment")
        elif s.name not in (raw.get(section) or {}):
            found.append(f"{s.key}: not set")
    return found


def test_the_shipped_file_sets_every_setting_to_its_schema_default() -> None:
    assert tuple(SHIPPED) == SECTIONS, "sections of the shipped file, in order"
    assert _yaml_drift(default_config_text()) == []


@pytest.mark.parametrize(("edit", "found"), [
    (("threads: 32", "threads: 33"), "server.threads: 33, the schema's default is 32"),
    (("  port: 9180\n", "  port: 9180\n  bogus: 1\n"), "metrics.bogus: not a setting"),
    (("  checksums: true\n", ""), "properties.checksums: not set"),
    (("  count_repeats: false", "  count_repeats: 0"), "throttle.count_repeats: 0, the schema's default is False"),
    (("  # url: the base URL", "  # the base URL"), "enrolment.url: not explained in a comment"),
])
def test_the_shipped_file_check_finds_each_kind_of_drift(edit: tuple[str, str], found: str) -> None:
    text = default_config_text()
    assert edit[0] in text
    assert found in _yaml_drift(text.replace(edit[0], edit[1], 1))


def test_the_readme_table_is_the_schema_rendered() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _readme_drift(readme) == [], (
        "README.md's configuration table differs from davserver/settings_schema.py: fix the schema, then "
        "paste the output of `python -m davserver.settings_schema` over the table")


@pytest.mark.parametrize(("edit", "found"), [
    (("| `server.threads` | `32` |", "| `server.threads` | `16` |"),
     "server.threads: default `16`, the schema's is `32`"),
    (("| `tls.min_version` | `\"1.2\"` |", "| `tls.min_version` | `1.2` |"), "tls.min_version: default `1.2`"),
    (("| requests served at the same time |", "| requests at once |"), "server.threads: meaning differs"),
    (("| `metrics.port` |", "| `metrics.prot` |"), "metrics.port: not documented"),
])
def test_the_readme_check_finds_each_kind_of_drift(edit: tuple[str, str], found: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert edit[0] in readme
    assert any(line.startswith(found) for line in _readme_drift(readme.replace(edit[0], edit[1], 1)))


def test_the_repository_file_is_the_packaged_one() -> None:
    assert (ROOT / "config" / "davserver.yaml").read_text() == default_config_text()


# --- the loader reads what the schema says -----------------------------------------------

#: Each section's dataclass, whose field defaults (for code that builds one directly)
#: must be the schema's.
DATACLASSES = {
    "server": config_module.ServerConfig, "limits": config_module.LimitsConfig, "tls": config_module.TLSConfig,
    "identity": config_module.IdentityConfig, "auth": config_module.AuthConfig,
    "audit": config_module.AuditConfig, "totp": config_module.TOTPConfig, "throttle": config_module.ThrottleConfig,
    "state": config_module.StateConfig, "locks": config_module.LocksConfig,
    "properties": config_module.PropertiesConfig, "enrolment": config_module.EnrolmentConfig,
    "metrics": config_module.MetricsConfig, "shares.NAME": config_module.ShareConfig,
}
#: Defaults the loader derives (so the dataclass holds a placeholder): what they come from.
DERIVED = {
    "enrolment.bind": "server.bind",
    "state.path": "the instance home",
    "state.url": "only with backend redis",
    "shares.NAME.require": "defaults.require",
}


def _section_of(cfg: config_module.Config, s: Setting) -> Any:
    return getattr(cfg, s.key.partition(".")[0])


def test_every_dataclass_field_is_a_setting_with_the_schema_default() -> None:
    for section, cls in DATACLASSES.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) - {"name"} == set(keys_of(section)), section
        for name, f in fields.items():
            if name == "name" or f.default is dataclasses.MISSING or f"{section}.{name}" in DERIVED:
                continue
            s = setting(f"{section}.{name}")
            assert f.default == s.default, (s.key, f.default, s.default)


def test_an_empty_config_gives_the_schema_default_of_every_setting(tmp_path: Path) -> None:
    home = Home(tmp_path)
    cfg = parse_config({}, home)
    redis = parse_config({"state": {"backend": "redis"}}, home).state
    for s in SETTINGS:
        if s.section == "shares.NAME":
            continue
        if s.key == "defaults.require":
            assert cfg.default_require == s.default
            continue
        value = getattr(redis if s.key in ("state.url", "state.prefix") else _section_of(cfg, s), s.name)
        if s.key == "enrolment.bind":
            assert value == cfg.server.bind
        elif s.type == "path" and s.default is not None:
            assert value == home.resolve(s.default), s.key
        elif s.type == "list":
            assert value == tuple(s.default), s.key
        else:
            assert value == s.default and type(value) is type(s.default), s.key


def test_a_share_without_its_optional_keys_takes_the_schema_defaults(tmp_path: Path) -> None:
    cfg = parse_config({"defaults": {"require": ["password", "totp"]}, "shares": {"a": {"path": "x"}}},
                       Home(tmp_path))
    share = cfg.shares["a"]
    assert share.path == tmp_path / "x"
    assert share.require == ("password", "totp")  # defaults.require, as the README says
    for name in ("read_only", "readers", "writers", "macos_clutter"):
        s = setting(f"shares.NAME.{name}")
        assert getattr(share, name) == s.default, name


#: What a setting needs beside it to be valid at all.
CONTEXT: dict[str, dict[str, Any]] = {"server.proxy_protocol": {"trusted_proxies": ["10.0.0.5"]}}


def _parse_one(s: Setting, value: Any, tmp_path: Path) -> config_module.Config:
    section, _, name = s.key.partition(".")
    return parse_config({section: {**CONTEXT.get(s.key, {}), name: value}}, Home(tmp_path))


def _beyond(s: Setting) -> list[Any]:
    assert s.lo is not None
    step = 1 if s.type == "int" else 0.001
    out: list[Any] = [s.lo - step]
    if s.hi is not None:
        out.append(s.hi + step)
    return out


@pytest.mark.parametrize("s", NUMBERS, ids=lambda s: s.key)
def test_every_number_is_accepted_at_its_bounds_and_refused_past_them(s: Setting, tmp_path: Path) -> None:
    assert s.lo is not None
    lo = int(s.lo) if s.type == "int" else s.lo
    for good in (lo, s.hi if s.type == "float" else (int(s.hi) if s.hi is not None else None), s.default):
        if good is None:
            continue
        value = getattr(_section_of(_parse_one(s, good, tmp_path), s), s.name)
        assert value == good and type(value) is type(s.default), (s.key, good)
    for bad in _beyond(s):
        with pytest.raises(ConfigError) as err:
            _parse_one(s, bad, tmp_path)
        assert err.value.key == s.key, (s.key, bad)
        assert repr(bad) in str(err.value)


@pytest.mark.parametrize("s", NUMBERS, ids=lambda s: s.key)
def test_every_number_refuses_what_is_not_a_number(s: Setting, tmp_path: Path) -> None:
    bads: list[Any] = [True, "5", None, [1]]
    if s.type == "int":
        bads.append(float(s.default) + 0.5)
    else:
        bads += [math.nan, math.inf, -math.inf]
    for bad in bads:
        with pytest.raises(ConfigError) as err:
            _parse_one(s, bad, tmp_path)
        assert err.value.key == s.key, (s.key, bad)


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.type in ("bool", "enum")], ids=lambda s: s.key)
def test_every_switch_and_choice_takes_its_values_and_nothing_else(s: Setting, tmp_path: Path) -> None:
    if s.section == "shares.NAME":
        return  # macos_clutter: below
    for good in (True, False) if s.type == "bool" else s.choices:
        assert getattr(_section_of(_parse_one(s, good, tmp_path), s), s.name) == good
    for bad in ("yes", 1, "nonsense"):
        with pytest.raises(ConfigError) as err:
            _parse_one(s, bad, tmp_path)
        assert err.value.key == s.key


@pytest.mark.parametrize("section", [*SECTIONS, "shares.NAME", ""])
def test_an_unknown_key_in_every_section_is_refused_naming_it_and_the_known_ones(section: str,
                                                                                  tmp_path: Path) -> None:
    if section == "":
        raw: dict[str, Any] = {"bogus_key": 1}
        key, known = "bogus_key", SECTIONS
    elif section == "shares":
        raw, key, known = {"shares": {"a": {"path": "x", "bogus_key": 1}}}, "shares.a.bogus_key", keys_of(
            "shares.NAME")
    elif section == "shares.NAME":
        raw, key, known = {"shares": {"a": {"path": "x", "read_only": True}}}, "", ()
    else:
        raw, key, known = {section: {"bogus_key": 1}}, f"{section}.bogus_key", keys_of(section)
    if not key:  # the twin: every known share key is accepted
        assert parse_config(raw, Home(tmp_path)).shares["a"].read_only is True
        return
    with pytest.raises(ConfigError) as err:
        parse_config(raw, Home(tmp_path))
    assert err.value.key == key
    assert err.value.message == "unknown key"
    assert err.value.hint == f"known keys: {', '.join(known)}"


def test_every_known_key_of_every_section_is_accepted(tmp_path: Path) -> None:
    """The twin of the unknown-key refusal: the shipped file with every key set parses."""
    raw = yaml.safe_load(default_config_text())
    raw["enrolment"].update(bind="127.0.0.1", url="https://dav.example.org:8444")
    raw["state"].update(backend="redis", url="redis://127.0.0.1:6379/0", prefix="x:", password_file="pw")
    for section, body in raw.items():
        if section != "shares":
            assert set(body) == set(keys_of(section)), section
    cfg = parse_config(raw, Home(tmp_path))
    assert cfg.state.password_file == tmp_path / "pw" and cfg.enrolment.url == "https://dav.example.org:8444"


def test_a_duplicate_key_in_the_file_is_refused_naming_it_and_both_lines(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.parent.mkdir(parents=True)
    for section, name in ((s.key.partition(".")[0], s.name) for s in SETTINGS if s.section != "shares.NAME"):
        home.config_file.write_text(f"{section}:\n  {name}: 1\n  {name}: 2\n")
        with pytest.raises(ConfigError) as err:
            load_config(home)
        assert err.value.key == f"{section}.{name}"
        assert "lines 2 and 3" in str(err.value) and "keep one of them" in str(err.value)


@pytest.mark.parametrize(("text", "key", "meant", "taken"), [  # taken: the value (not the default) is read
    ("server: {threds: 3}", "server.threds", "threads", lambda c: c.server.threads == 3),
    ("state: {backnd: redis}", "state.backnd", "backend", lambda c: c.state.backend == "redis"),
    ("shares: {a: {path: x, read-only: true}}", "shares.a.read-only", "read_only", lambda c: c.shares["a"].read_only),
    ("sever: {port: 1}", "sever", "server", lambda c: c.server.port == 1),
])
def test_a_misspelt_key_is_refused_naming_the_key_it_resembles(text: str, key: str, meant: str,
                                                                taken: Callable[[Config], bool],
                                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_load(text), Home(tmp_path))
    assert err.value.key == key
    assert err.value.hint.startswith(f"did you mean {meant}? known keys: ")
    # the twin: spelt right, it is taken
    assert taken(parse_config(yaml.safe_load(text.replace(key.rpartition(".")[2], meant)), Home(tmp_path)))


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("server:\n  bind: 127.0.0.1\n  port: 0\n  bind: 0.0.0.0\n", "server.bind", (2, 4)),
    ("state:\n  backend: sqlite\n  path: state/state.db\n  backend: redis\n", "state.backend", (2, 4)),
])
def test_the_duplicate_keys_of_the_report_are_refused(text: str, key: str, lines: tuple[int, int],
                                                      tmp_path: Path) -> None:
    """Two ``bind:`` (served on the second while printing the first) and two ``backend:``."""
    home = Home(tmp_path)
    home.config_file.parent.mkdir(parents=True)
    home.config_file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(home)
    assert err.value.key == key
    assert f"lines {lines[0]} and {lines[1]}" in str(err.value)
    # the twin: each written once, the file loads with the one value
    head, _, _ = text.rpartition(f"  {key.partition('.')[2]}:")
    home.config_file.write_text(head)
    cfg = load_config(home)
    assert (cfg.server.bind, cfg.state.backend) == ("127.0.0.1", "sqlite")


#: A module's fallback for when it is built without a config (module.NAME, or a dataclass
#: field's default as Class.field) -> the setting whose default (or ``.lo``/``.hi`` bound) it
#: is. Each reads it from settings_schema.py; this keeps anyone from writing the number again.
FALLBACKS = {
    "enrolment_listener.THREADS": "enrolment.threads",
    "enrolment_listener.HANDSHAKES_TOTAL": "enrolment.handshakes_total",
    "enrolment_listener.HEADER_BYTES": "enrolment.header_bytes",
    "enrolment_listener.KEEP_ALIVE": "enrolment.keep_alive_limit",
    "enrolment_listener.HEADER_PHASE_PER_ADDRESS": "enrolment.header_phase_per_address",
    "enrolment_pages.MAX_FORM_BYTES": "enrolment.form_bytes",
    "issuance.MAX_CSR_BYTES": "enrolment.csr_bytes",
    "invitations.MAX_VALID_SECONDS": "enrolment.invite_seconds.hi",
    "cli._MIN_INVITE_SECONDS": "enrolment.invite_seconds.lo",
    "cli._MAX_INVITE_SECONDS": "enrolment.invite_seconds.hi",
    "fs.DEFAULT_MAX_TREE_DEPTH": "limits.max_tree_depth",
    "proxy_protocol.ProxyPolicy.max_v2_bytes": "server.proxy_header_bytes",
    "store.davstate.PropertyBounds.value_bytes": "properties.max_value_bytes",
    "store.davstate.PropertyBounds.per_resource": "properties.max_per_resource",
    "store.davstate.PropertyBounds.bytes_per_resource": "properties.max_bytes_per_resource",
    "store.davstate.PropertyBounds.answer_bytes": "properties.max_propfind_bytes",
    "store.davstate.PropertyBounds.answer_names": "properties.max_propfind_names",
    "store.davstate.LockBounds.per_resource": "locks.max_per_resource",
    "store.davstate.LockBounds.per_account": "locks.max_per_account",
    "store.davstate.LockBounds.owner_bytes": "locks.max_owner_bytes",
}


@pytest.mark.parametrize("where", sorted(FALLBACKS))
def test_every_fallback_elsewhere_is_the_schema_default(where: str) -> None:
    module, _, name = where.rpartition(".")
    if module.rpartition(".")[2][:1].isupper():  # a dataclass field: its default
        module, _, cls = module.rpartition(".")
        value = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(f"davserver.{module}"),
                                                                         cls))}[name]
    else:
        value = getattr(importlib.import_module(f"davserver.{module}"), name)
    key = FALLBACKS[where]
    bound = key.rpartition(".")[2] if key.endswith((".lo", ".hi")) else None
    s = setting(key.rpartition(".")[0] if bound else key)
    assert value == (getattr(s, bound) if bound else s.default)


@settings(max_examples=400, deadline=None, database=None)
@given(st.sampled_from(NUMBERS), st.one_of(st.integers(-(1 << 42), 1 << 42), st.floats(allow_nan=True)))
def test_a_number_setting_takes_exactly_the_values_within_its_bounds(s: Setting, value: int | float) -> None:
    """Whatever the number, the loader takes it iff the schema's bounds hold it (a whole
    number for an int, a finite one for a float), and then it is the value used."""
    assert s.lo is not None
    kind_ok = isinstance(value, int) if s.type == "int" else math.isfinite(value)
    inside = kind_ok and s.lo <= value and (s.hi is None or value <= s.hi)
    section, _, name = s.key.partition(".")
    raw = {section: {**CONTEXT.get(s.key, {}), name: value}}
    try:
        cfg = parse_config(raw, Home(ROOT / "nonexistent"))
    except ConfigError as err:
        assert not inside, (s.key, value, str(err))
        assert err.key == s.key
        return
    assert inside, (s.key, value)
    assert getattr(getattr(cfg, section), name) == value


def test_a_duration_past_its_ceiling_names_the_ceiling_as_written(tmp_path: Path) -> None:
    """The invitation lifetime's ceiling is a year: the message says 31536000, not 3.1536e+07."""
    with pytest.raises(ConfigError) as err:
        parse_config({"enrolment": {"invite_seconds": 99999999}}, Home(tmp_path))
    assert str(err.value) == "enrolment.invite_seconds: 99999999 is more than 31536000 (use at most 31536000)"
    cfg = parse_config({"enrolment": {"invite_seconds": 31536000}}, Home(tmp_path))
    assert cfg.enrolment.invite_seconds == 31536000
