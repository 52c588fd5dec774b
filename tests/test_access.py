"""The one access decision (access.decide), as a pure function, and the one list of
reasons: every reason any layer of the server can give is a member of access.Refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from davserver.access import Refusal, decide
from davserver.accounts import Account
from davserver.config import ShareConfig
from davserver.target import Target

ROOT = Path(__file__).resolve().parent.parent
SHARES = {
    "files": ShareConfig("files", Path("/f"), writers=("*",)),
    "team": ShareConfig("team", Path("/t"), readers=("bob",), writers=("@staff",)),
    "ro": ShareConfig("ro", Path("/r"), read_only=True, readers=("*",)),
    "mac": ShareConfig("mac", Path("/m"), writers=("*",), macos_clutter="refuse"),
}
ALICE = Account("alice", None, groups=frozenset({"staff"}))
BOB = Account("bob", None)
CAROL = Account("carol", None)


def t(path: str) -> Target:
    parts = tuple(p for p in path.split("/") if p)
    return Target(parts, trailing_slash=path.endswith("/") and bool(parts))


@pytest.mark.parametrize(("account", "method", "target", "dest", "reason"), [
    (BOB, "GET", "/team/a", None, None),
    (BOB, "PUT", "/team/a", None, Refusal.WRITE_DENIED),
    (CAROL, "GET", "/team/a", None, Refusal.SHARE_DENIED),
    (ALICE, "PUT", "/ro/a", None, Refusal.READ_ONLY),
    (ALICE, "PUT", "/", None, Refusal.WRITE_DENIED),
    (ALICE, "PUT", "/nosuch/x", None, Refusal.SHARE_DENIED),
    (ALICE, "GET", "/nosuch/x", None, Refusal.SHARE_DENIED),  # answers like a share alice cannot read
    (ALICE, "GET", "/", None, None),
    (ALICE, "LOCK", "/files/", None, Refusal.SHARE_ROOT),
    (ALICE, "BREW", "/files/x", None, None),  # unknown methods count as writes: files allows them
    (BOB, "BREW", "/team/x", None, Refusal.WRITE_DENIED),
    (ALICE, "DELETE", "/files/", None, Refusal.SHARE_ROOT),
    (ALICE, "MOVE", "/files", "/team/x", Refusal.SHARE_ROOT),
    (CAROL, "DELETE", "/team/", None, Refusal.SHARE_DENIED),  # a share carol cannot see is not confirmed
    (ALICE, "PUT", "/mac/._x", None, Refusal.MACOS_CLUTTER),
    (BOB, "COPY", "/team/a", "/files/a", None),  # a reader copies out into a share it writes
    (BOB, "COPY", "/files/a", "/team/a", Refusal.DEST_WRITE_DENIED),
    (BOB, "MOVE", "/team/a", "/files/a", Refusal.WRITE_DENIED),  # a MOVE writes its source
    (CAROL, "COPY", "/files/a", "/team/a", Refusal.DEST_SHARE_DENIED),
    (ALICE, "COPY", "/files/a", "/ro/a", Refusal.DEST_READ_ONLY),
    (ALICE, "COPY", "/files/a", "/files/", Refusal.DEST_SHARE_ROOT),
    (ALICE, "COPY", "/files/a", "/", Refusal.DEST_WRITE_DENIED),
    (ALICE, "COPY", "/files/a", "/mac/.DS_Store", Refusal.DEST_MACOS_CLUTTER),
    (ALICE, "COPY", "/files/a", None, Refusal.BAD_DESTINATION),
    (ALICE, "COPY", "/files/a", "/team/a", None),
])
def test_each_rule(account: Account, method: str, target: str, dest: str | None, reason: Refusal | None) -> None:
    assert decide(account, method, t(target), t(dest) if dest else None, SHARES) == reason


def test_every_reason_the_server_gives_is_in_the_one_list() -> None:
    """String reasons in the code (deny("…"), _failed("…"), the limit key, auth outcomes)."""
    patterns = [r'deny\(\s*"([a-z_]+)"', r'_failed\(\s*"([a-z_]+)"', r'davserver\.limit"\] = "([a-z_]+)"',
                r'return "([a-z_]+)", None', r'outcome = "([a-z_]+)"']
    found: set[str] = set()
    for source in (ROOT / "davserver").rglob("*.py"):
        text = source.read_text()
        for pattern in patterns:
            found |= set(re.findall(pattern, text))
    assert found, "the patterns still match the code"
    known = {r.value for r in Refusal} | {"ok"}
    assert found <= known, sorted(found - known)


def test_every_scandir_of_the_server_is_closed() -> None:
    """Each os.scandir iterator is opened in a with statement (or entered by one on the next
    line), so an error half-way or an early exit never leaves one for the garbage collector."""
    for source in (ROOT / "davserver").rglob("*.py"):
        lines = source.read_text().splitlines()
        for i, line in enumerate(lines):
            if "os.scandir(" not in line or line.lstrip().startswith(("#", "``", "*")) or "``scandir``" in line:
                continue
            entered = "with " in line or (i + 4 < len(lines) and any(
                ln.strip().startswith("with ") and line.split("=")[0].strip() in ln for ln in lines[i + 1:i + 6]))
            assert entered, f"{source.name}:{i + 1}: {line.strip()}"
