"""`rclone sync` with the owncloud vendor: a same-size edit is uploaded, an unchanged tree is not.

rclone's WebDAV backend with ``vendor = other`` has no modification times (precision
ModTimeNotSupported, backend/webdav/webdav.go) and no hashes, so it compares sizes
only; ``vendor = owncloud`` sends X-OC-Mtime and OC-Checksum with each PUT and reads
oc:checksums (oc_compat.py). What was sent is counted in the server's audit log (one
line per request) and in rclone's own ``-v`` output.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from davserver.server import DavServer
from tests.conftest import Instance
from tests.test_clients import TIMEOUT, clean_env, require_tool

pytestmark = pytest.mark.client

#: The issue's edit: the size stays, the amount changes.
BEFORE = b"Invoice 2026-11: total 1000 EUR\n"
AFTER = b"Invoice 2026-11: total 9000 EUR\n"


def remote(inst: Instance, server: DavServer, tmp_path: Path, vendor: str) -> dict[str, str]:
    """An rclone environment with remote ``dav:`` = the files share as alice, the given vendor
    (as docs/clients.md writes it: PEM files in RCLONE_* variables)."""
    rclone = require_tool("rclone")
    env = clean_env(tmp_path)
    alice = inst.clients["alice"]
    obscured = subprocess.run([rclone, "obscure", "-"], input=alice.password, capture_output=True, text=True,
                              env=env, timeout=TIMEOUT, check=True).stdout.strip()
    conf = tmp_path / f"rclone-{vendor}.conf"
    conf.write_text(f"[dav]\ntype = webdav\nurl = {server.url}files/\nvendor = {vendor}\n"
                    f"user = alice\npass = {obscured}\n")
    conf.chmod(0o600)
    env.update(RCLONE_CONFIG=str(conf), RCLONE_CA_CERT=str(inst.ca_file),
               RCLONE_CLIENT_CERT=str(alice.crt), RCLONE_CLIENT_KEY=str(alice.key))
    return env


def rclone(env: dict[str, str], *args: str) -> str:
    """Run rclone with ``-v`` (one INFO line per file copied); its output, or fail with it."""
    proc = subprocess.run([require_tool("rclone"), "-v", "--retries", "1", "--low-level-retries", "1", *args],
                          capture_output=True, text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def copied(output: str) -> list[str]:
    """The names rclone -v says it uploaded ("INFO  : NAME: Copied (new)", "(replaced existing)")."""
    return sorted(line.split(" : ", 1)[1].rsplit(": Copied", 1)[0] for line in output.splitlines()
                  if ": Copied (" in line)


class Audit:
    """PUTs recorded in the audit log since the last look."""

    def __init__(self, inst: Instance) -> None:
        self.path = inst.home.root / "state" / "audit.log"
        self.seen = 0

    def new_puts(self, expect: int) -> list[str]:
        """The paths of PUTs recorded since the last call, once ``expect`` have come (a
        record is written when its request is done, just after the answer) and a short
        quiet time has shown no more are on their way."""
        deadline = time.monotonic() + 10
        while True:
            records = [json.loads(line) for line in self.path.read_text().splitlines()]
            puts = [str(r["path"]) for r in records[self.seen:] if r["method"] == "PUT"]
            if len(puts) >= expect or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        puts = [str(r["path"]) for r in records[self.seen:] if r["method"] == "PUT"]
        self.seen = len(records)
        return sorted(puts)


def make_tree(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    (src / "invoice.txt").write_bytes(BEFORE)
    (src / "notes.md").write_text("# notes\n")
    (src / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "empty").write_bytes(b"")
    day_ago = time.time_ns() - 86_400 * 10**9  # files made earlier than the sync: their times matter
    for p in src.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(day_ago, day_ago))


def edit_same_size(path: Path) -> None:
    """The issue's edit, saved a few seconds later (an editor keeps the size, the clock moves on)."""
    old = path.stat().st_mtime_ns
    path.write_bytes(AFTER)
    os.utime(path, ns=(old + 5_000_000_000, old + 5_000_000_000))


def test_owncloud_vendor_uploads_a_same_size_edit_and_nothing_else(inst: Instance, server: DavServer,
                                                                    tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    env = remote(inst, server, tmp_path, "owncloud")
    audit = Audit(inst)
    dest = inst.home.root / "data" / "files" / "sync"

    out = rclone(env, "sync", str(src), "dav:sync")
    assert copied(out) == ["empty", "invoice.txt", "notes.md", "sub/data.bin"]
    assert audit.new_puts(4) == ["/files/sync/empty", "/files/sync/invoice.txt", "/files/sync/notes.md",
                                 "/files/sync/sub/data.bin"]
    for p in src.rglob("*"):
        if p.is_file():  # the times rclone sent as X-OC-Mtime, to the second
            assert (dest / p.relative_to(src)).stat().st_mtime == int(p.stat().st_mtime), p

    out = rclone(env, "sync", str(src), "dav:sync")  # nothing changed
    assert copied(out) == [] and "There was nothing to transfer" in out, out
    assert audit.new_puts(0) == []

    edit_same_size(src / "invoice.txt")
    out = rclone(env, "sync", str(src), "dav:sync")
    assert copied(out) == ["invoice.txt"], out
    assert audit.new_puts(1) == ["/files/sync/invoice.txt"]
    assert (dest / "invoice.txt").read_bytes() == AFTER

    out = rclone(env, "sync", str(src), "dav:sync")
    assert copied(out) == [] and audit.new_puts(0) == []

    # rclone reads the server's oc:checksums: its SHA-1 of every file is the local one
    listed = {name: digest for digest, name in (
        line.split("  ", 1) for line in rclone(env, "hashsum", "sha1", "dav:sync").splitlines()
        if "  " in line and not line.startswith(("INFO", "NOTICE", "DEBUG", "20")))}
    want = {str(p.relative_to(src)): hashlib.sha1(p.read_bytes(), usedforsecurity=False).hexdigest()
            for p in src.rglob("*") if p.is_file()}
    assert listed == want
    check = rclone(env, "check", str(src), "dav:sync")
    assert "0 differences found" in check and "4 matching files" in check, check


def test_checksum_mode_finds_the_edit_without_looking_at_times(inst: Instance, server: DavServer,
                                                               tmp_path: Path) -> None:
    """``rclone sync --checksum`` compares size and oc:checksums: the edit is found even when
    the edited file keeps its modification time, and unchanged files are not sent again."""
    src = tmp_path / "src"
    make_tree(src)
    env = remote(inst, server, tmp_path, "owncloud")
    audit = Audit(inst)
    rclone(env, "sync", "--checksum", str(src), "dav:sum")
    assert len(audit.new_puts(4)) == 4
    old = (src / "invoice.txt").stat()
    (src / "invoice.txt").write_bytes(AFTER)
    os.utime(src / "invoice.txt", ns=(old.st_atime_ns, old.st_mtime_ns))  # the time is not a hint
    out = rclone(env, "sync", "--checksum", str(src), "dav:sum")
    assert copied(out) == ["invoice.txt"] and audit.new_puts(1) == ["/files/sum/invoice.txt"]
    assert (inst.home.root / "data" / "files" / "sum" / "invoice.txt").read_bytes() == AFTER
    out = rclone(env, "sync", "--checksum", str(src), "dav:sum")
    assert copied(out) == [] and audit.new_puts(0) == []


def test_vendor_other_compares_sizes_only_and_misses_the_edit(inst: Instance, server: DavServer,
                                                              tmp_path: Path) -> None:
    """Why docs/clients.md says ``vendor=owncloud``: with ``vendor=other`` rclone has neither
    times nor hashes from any WebDAV server, and the same-size edit is never uploaded."""
    src = tmp_path / "src"
    make_tree(src)
    env = remote(inst, server, tmp_path, "other")
    rclone(env, "sync", str(src), "dav:other")
    edit_same_size(src / "invoice.txt")
    out = rclone(env, "sync", str(src), "dav:other")
    assert copied(out) == []
    assert (inst.home.root / "data" / "files" / "other" / "invoice.txt").read_bytes() == BEFORE
