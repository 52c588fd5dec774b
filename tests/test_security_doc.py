"""docs/security.md names modules, settings, tests and audit reasons: each must exist,
so the page cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from davserver.access import Refusal
from davserver.instance import default_config_text

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "security.md").read_text()


def test_every_named_test_file_and_test_exists() -> None:
    for path, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", DOC):
        source = (ROOT / path).read_text()
        if name:
            assert f"def {name}(" in source, f"{path}::{name}"


def test_every_named_module_exists() -> None:
    for module in set(re.findall(r"`((?:auth/|store/)?[a-z_0-9]+\.py)`", DOC)):
        assert (ROOT / "davserver" / module).is_file(), module


def test_every_named_setting_is_a_default_setting() -> None:
    defaults = yaml.safe_load(default_config_text())
    for section, key in re.findall(r"`(server|limits|throttle|properties|locks)\.([a-z_]+)`", DOC):
        if key != "py":  # a module name such as `limits.py`
            assert key in defaults[section], f"{section}.{key}"


def test_every_named_reason_is_in_the_one_list() -> None:
    reasons = {r.value for r in Refusal}
    named = set(re.findall(r"\(4\d\d `([a-z_]+)`\)|reason[s]?: `([a-z_]+)`", DOC))
    for pair in named:
        for reason in pair:
            assert not reason or reason in reasons, reason
    for reason in re.findall(r"`([a-z]+_[a-z_]+)`", DOC.split("Reasons:")[1].split("\n- **Tests")[0]):
        assert reason in reasons, reason
