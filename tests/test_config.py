"""Configuration: every mistake names the key, the value and the fix; the shipped file stays documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from davserver.config import ConfigError, Home, load_config, parse_config
from davserver.instance import default_config_text

ROOT = Path(__file__).resolve().parent.parent


def parse(text: str, tmp_path: Path):
    return parse_config(yaml.safe_load(text), Home(tmp_path))


def test_defaults_are_sane(tmp_path: Path) -> None:
    cfg = parse("", tmp_path)
    assert cfg.server.bind == "127.0.0.1" and cfg.server.port == 8443
    assert cfg.tls.min_version == "1.2"
    assert cfg.tls.client_ca == tmp_path / "certs/ca.crt"
    assert cfg.default_require == ("password",)
    assert cfg.shares == {}


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("server: {port: 70000}", "server.port", "0 to 65535"),
        ("server: {port: '80'}", "server.port", "whole number"),
        ("server: {bind: my-host}", "server.bind", "IP address"),
        ("server: {threds: 3}", "server.threds", "known keys"),
        ("tls: {min_version: '1.0'}", "tls.min_version", "1.2 or 1.3"),
        ("shares: {Files: {path: x}}", "shares.Files", "lower-case"),
        ("shares: {a: {read_only: true}}", "shares.a.path", "non-empty"),
        ("shares: {a: {path: x, writers: [bad name]}}", "shares.a.writers", "@group"),
        ("shares: {a: {path: x, require: [totp]}}", "shares.a.require", "password, totp"),
        ("identity: {subject_rules: [dn]}", "identity.subject_rules", "cn, san_email"),
        ("shares: [a, b]", "shares", "mapping"),
        ("bogus: 1", "bogus", "known keys"),
    ],
)
def test_bad_values_name_key_and_fix(tmp_path: Path, text: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, tmp_path)
    assert err.value.key == key
    assert hint in str(err.value)


def test_invalid_yaml_says_where(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.parent.mkdir(parents=True)
    home.config_file.write_text("server:\n  port: [1,\n")
    with pytest.raises(ConfigError, match=r"davserver.yaml: not valid YAML at line \d+"):
        load_config(home)


def test_missing_config_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="davserver init"):
        load_config(Home(tmp_path))


def test_share_permissions(tmp_path: Path) -> None:
    cfg = parse("shares: {t: {path: t, readers: [bob], writers: ['@staff']}, r: {path: r, read_only: true, "
                "writers: ['*']}}", tmp_path)
    t, r = cfg.shares["t"], cfg.shares["r"]
    assert t.may_read("bob", frozenset()) and not t.may_write("bob", frozenset())
    assert t.may_write("alice", frozenset({"staff"}))
    assert not t.may_read("carol", frozenset())
    assert r.may_read("anyone", frozenset()) and not r.may_write("anyone", frozenset())


def test_repository_config_is_the_packaged_default() -> None:
    assert (ROOT / "config" / "davserver.yaml").read_text() == default_config_text()


def test_every_default_config_key_parses_and_is_documented_in_the_readme(tmp_path: Path) -> None:
    raw = yaml.safe_load(default_config_text())
    parse_config(raw, Home(tmp_path))
    readme = (ROOT / "README.md").read_text()
    keys = [f"{section}.{key}" for section, body in raw.items() if section != "shares" for key in body]
    keys += ["shares.NAME.path", "shares.NAME.read_only", "shares.NAME.readers", "shares.NAME.writers",
             "shares.NAME.require", "shares.NAME.macos_clutter"]
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"
    # and every share key the parser accepts is explained in the shipped file's comments
    for key in ("path", "read_only", "readers", "writers", "require", "macos_clutter"):
        assert re.search(rf"#\s+{key}:", default_config_text()), key
