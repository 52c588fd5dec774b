"""Two shares whose folders are the same, or one inside the other, must agree on every
access setting (share_overlap.py): else ``/nest/secure/x`` would be ``/secure/x`` under
``nest``'s rules, a share needing a code read and written with the password alone. The
server refuses to start (one line, exit 2) and ``davserver check`` reports an error; when
the settings are identical it is only a warning."""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from davserver.check import check_instance
from davserver.cli import main
from davserver.config import load_config
from davserver.errors import StartupError
from davserver.server import DavServer, check_shares
from davserver.share_overlap import access_settings

from .conftest import Instance, running, session_for
from .test_totp_live import configure

#: (a's folder, b's folder) under data/, and a symlink to make first (link, its target).
LAYOUTS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "same folder": ("x", "x", None),
    "nested": ("x", "x/in", None),
    "containing": ("x/in", "x", None),
    "via symlink": ("x", "link", ("link", "x/in")),
}
BASE: dict[str, Any] = {"writers": ["*"]}
#: b's settings against a's BASE, and the setting named in the refusal (None: identical).
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "require": ({"writers": ["*"], "require": ["password", "totp"]}, "require"),
    "readers": ({"writers": ["*"], "readers": ["bob"]}, "readers"),
    "writers": ({"writers": ["@staff"]}, "writers"),
    "read_only": ({"writers": ["*"], "read_only": True}, "read_only"),
    "macos_clutter": ({"writers": ["*"], "macos_clutter": "refuse"}, "macos_clutter"),
    "identical": (dict(BASE), None),
}


def _set_shares(inst: Instance, shares: dict[str, dict[str, Any]]) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["shares"].update(shares)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def test_every_access_setting_of_a_share_is_compared() -> None:
    """A new per-share setting counts without a change to share_overlap.py."""
    assert set(access_settings()) >= {"require", "readers", "writers", "read_only", "macos_clutter"}
    assert {v for _, v in VARIANTS.values() if v} == set(access_settings()), "the loop covers each one"


def test_overlapping_shares_are_refused_unless_identical(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    data = inst.home.root / "data"
    (data / "x" / "in").mkdir(parents=True)
    (data / "link").symlink_to(data / "x" / "in")
    original = inst.home.config_file.read_text()
    for (layout, (pa, pb, _link)), (variant, (b_spec, differing)) in itertools.product(
            LAYOUTS.items(), VARIANTS.items()):
        inst.home.config_file.write_text(original)
        _set_shares(inst, {"a": {"path": f"data/{pa}", **BASE}, "b": {"path": f"data/{pb}", **b_spec}})
        config = load_config(inst.home)
        findings = [f for f in check_instance(inst.home) if "shares.a" in f.message and "shares.b" in f.message]
        caplog.clear()
        case = f"{layout} × {variant}"
        if differing:
            with pytest.raises(StartupError) as refused:
                check_shares(config)
            line = str(refused.value)
            assert "shares.a" in line and "shares.b" in line and differing in line and "fix:" in line, case
            assert "\n" not in line, case
            assert [f.level for f in findings] == ["error"], case
            assert differing in findings[0].message, case
        else:
            with caplog.at_level(logging.WARNING, logger="davserver"):
                check_shares(config)
            assert any("shares.a" in r.getMessage() and "shares.b" in r.getMessage() for r in caplog.records), case
            assert [f.level for f in findings] == ["warning"], case


def test_shares_side_by_side_are_not_an_overlap(inst: Instance) -> None:
    """The twin: folders with a common parent (data/x, data/xy: a prefix of the name, not
    of the path) are no overlap, whatever their settings."""
    for name in ("x", "xy"):
        (inst.home.root / "data" / name).mkdir()
    _set_shares(inst, {"a": {"path": "data/x", **BASE}, "b": {"path": "data/xy", "require": ["password", "totp"],
                                                                "readers": ["bob"]}})
    check_shares(load_config(inst.home))
    assert not [f for f in check_instance(inst.home) if "shares.a" in f.message]


def _issue_config(inst: Instance) -> None:
    """The review's configuration: ``nest`` (password, everybody writes) holds data/secure."""
    configure(inst)
    _set_shares(inst, {"nest": {"path": "data", "writers": ["*"]}})


def test_the_reported_configuration_does_not_start(inst: Instance) -> None:
    _issue_config(inst)
    with pytest.raises(StartupError, match=r"shares\.nest\.path .* contains shares\.(open|ro|secure|team)\.path"):
        DavServer(load_config(inst.home), port=0).start()
    proc = subprocess.run([sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve",
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # files has nest's settings (a warning); the first pair that differs stops the start
    assert len(lines) == 1 and re.search(r"shares\.nest\.path .* contains shares\.(open|ro|secure|team)\.path",
                                         lines[0]), proc.stderr
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "check"])
    assert out.exit_code == 1, out.output
    assert any(line.startswith("error:") and "shares.nest" in line and "shares.secure" in line
               and "require" in line for line in out.output.splitlines()), out.output
    assert "all is well" not in out.output


def test_without_the_overlapping_share_the_code_share_serves(inst: Instance) -> None:
    """The twin: the same instance with ``nest`` on a folder of its own starts, and both serve."""
    configure(inst)
    (inst.home.root / "nest").mkdir()
    _set_shares(inst, {"nest": {"path": "nest", "writers": ["*"]}})
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "check"])
    assert "shares.nest" not in out.output, out.output
    with running(inst) as server, session_for(inst) as s:
        assert s.get(server.url + "nest/").status_code == 200
        assert s.get(server.url + "secure/").status_code == 401  # a code is needed


def test_identical_overlap_starts_with_a_warning(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    """Two names for the same files with the same rules: allowed, told once at start."""
    (inst.home.root / "data" / "files" / "sub").mkdir()
    _set_shares(inst, {"alias": {"path": "data/files/sub", "writers": ["*"]}})
    with caplog.at_level(logging.WARNING, logger="davserver"), running(inst) as server, session_for(inst) as s:
        assert s.put(server.url + "alias/a.txt", data=b"x").status_code == 201
        assert (inst.home.root / "data" / "files" / "sub" / "a.txt").read_bytes() == b"x"
    assert any("shares.files" in r.getMessage() and "shares.alias" in r.getMessage() for r in caplog.records)
