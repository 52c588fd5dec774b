"""files.write_atomic is the one whole-file writer and files.FileWatch the one change watcher:
a crash before the rename leaves the old file, a secret is never readable by others (not
while it is written either), the folder is fsynced; and every watcher (accounts, CRL,
server certificate, the renewal's CA file) reloads after an edit in the same second that
keeps the size, and after a replace by rename."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from davserver.accounts import AccountsWatcher
from davserver.config import load_config
from davserver.files import FileStamp, FileWatch, file_stamp, write_atomic
from davserver.pki import CertificateAuthority
from davserver.renewal import Renewals
from davserver.revocation import RevocationList
from davserver.server_certificate import ServerCertificate

from .conftest import Instance

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"


# --- write_atomic ----------------------------------------------------------------------


def test_a_failed_replace_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "accounts.yaml"
    write_atomic(target, b"old\n")

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(target, b"new content\n")
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accounts.yaml"]


_CRASHER = """
import os, sys, time
from pathlib import Path
from davserver import files
os.umask(0)  # the temp file must not depend on the umask to stay private
def stalled_fchmod(fd, mode):
    print("written", flush=True)
    time.sleep(60)  # killed here: the bytes written, the final mode not yet set, nothing renamed
files.os.fchmod = stalled_fchmod
files.write_atomic(Path(sys.argv[1]), b"new secret" * 100_000, 0o644)
"""


def test_a_process_killed_mid_write_leaves_the_old_file_and_a_private_temp(tmp_path: Path) -> None:
    target = tmp_path / "ca.key"
    write_atomic(target, b"old secret\n", 0o600)
    with subprocess.Popen([sys.executable, "-c", _CRASHER, str(target)], stdout=subprocess.PIPE, text=True) as proc:
        _kill_mid_write(proc, tmp_path)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old secret\n"


def _kill_mid_write(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        temps = [p for p in tmp_path.iterdir() if p.name != "ca.key"]
        assert len(temps) == 1 and re.fullmatch(r"\.ca\.key\.[0-9a-f]{12}\.tmp", temps[0].name)
        mode = stat.S_IMODE(temps[0].stat().st_mode)
        assert mode == 0o600, oct(mode)  # under umask 0: private from creation, not by luck
        assert temps[0].stat().st_size == 1_000_000
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    for umask in (0o000, 0o077):
        old = os.umask(umask)
        try:
            target = tmp_path / f"f{umask:o}"
            write_atomic(target, b"x", mode)
            write_atomic(target, b"y", mode)  # and again over an existing file
        finally:
            os.umask(old)
        assert stat.S_IMODE(target.stat().st_mode) == mode
        assert target.read_bytes() == b"y"


def test_the_file_and_its_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "crl.pem"
    synced: list[tuple[bool, int]] = []
    real = os.fsync

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_atomic(target, b"crl", 0o644, folder_mode=0o700)
    assert synced == [(False, synced[0][1]), (True, target.parent.stat().st_ino)]
    assert synced[0][1] == target.stat().st_ino  # the temp file fsynced is the file now in place
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_every_whole_file_writer_uses_write_atomic() -> None:
    """Only files.py replaces a file by rename; fs.py's uploads (AtomicFile, with a locked
    temp file) and the metrics archive (an mmap file prometheus_client writes) are the two
    writers that cannot hand over their bytes at once."""
    allowed = {"files.py": 1, "fs.py": 3, "metrics.py": 1, "copymove.py": 1, "cert_lifecycle.py": 1}
    found: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        n = len(re.findall(r"os\.replace\(|os\.rename\(|mkstemp\(|NamedTemporaryFile\(", text))
        if n:
            found[path.name] = n
    assert found == allowed


# --- FileWatch -------------------------------------------------------------------------


def _same_size_edit(path: Path, new: bytes) -> None:
    """Write ``new`` (as long as the old content) into the same inode and set the mtime back:
    only the ctime tells, as after an edit within the same second on a coarse clock."""
    st = path.stat()
    assert len(new) == st.st_size
    time.sleep(0.02)  # past the kernel's coarse clock tick, so the ctime moves
    with open(path, "r+b") as fh:
        fh.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def _rename_over(path: Path, new: bytes) -> None:
    """Replace ``path`` by renaming a new file of the same size and mtime over it."""
    st = path.stat()
    assert len(new) == st.st_size
    side = path.with_name(path.name + ".new")
    side.write_bytes(new)
    os.utime(side, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(side, path)


def test_file_watch_sees_each_kind_of_change(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"aaaa")
    watch = FileWatch(path, seen=file_stamp(path))
    assert watch.look() == (False, watch.seen)
    for change in (_same_size_edit, _rename_over):
        change(path, b"bbbb" if path.read_bytes() == b"aaaa" else b"aaaa")
        changed, stamp = watch.look()
        assert changed and isinstance(stamp, FileStamp)
        watch.seen = stamp
        assert watch.look() == (False, stamp)
    path.unlink()
    assert watch.look() == (True, None)
    assert FileWatch(path).look() == (False, None)


def _crl_signed_again(inst: Instance, path: Path) -> bytes:
    """The CRL signed again later (another lastUpdate and nextUpdate), retried until the
    ECDSA signature's DER has the old length; the file is left as it was."""
    old = path.read_bytes()
    for days in range(2, 60):
        inst.ca.write_crl(next_update_days=days)
        new = path.read_bytes()
        path.write_bytes(old)
        if len(new) == len(old):
            return new
    raise AssertionError("no CRL of the same size")


#: Per watcher: make it, the file it watches, what it shows now, content of the same size
#: that it shows differently.
WATCHERS: dict[str, tuple[Callable[[Instance], Any], Callable[[Instance], Path], Callable[[Any], object],
                          Callable[[Instance, Path], bytes]]] = {
    "accounts": (lambda i: AccountsWatcher(i.home.accounts_file), lambda i: i.home.accounts_file,
                 lambda w: sorted(w.current()),
                 lambda i, p: p.read_bytes().replace(b"carol", b"carox")),  # an account renamed
    "crl": (lambda i: RevocationList(i.ca.crl_path), lambda i: i.ca.crl_path,
            lambda w: (w.serials(), w.next_update), _crl_signed_again),
    # The same bundle written again: the stamp alone must tell (check() reloads, reloads + 1).
    "server-certificate": (lambda i: ServerCertificate(load_config(i.home).tls),
                           lambda i: load_config(i.home).tls.client_ca,
                           lambda w: (w.check(), w.reloads)[1], lambda i, p: p.read_bytes()),
    "renewal-ca": (lambda i: Renewals(i.home, None, renew_before_days=30, revoke_renewed=False,
                                      renew=lambda *a, **k: None),
                   lambda i: CertificateAuthority(i.home.certs_dir).ca_cert_path,
                   lambda w: w._ca_subjects(),
                   lambda i, p: b"x" * p.stat().st_size),  # not PEM any more: no CA names
}


@pytest.mark.parametrize("kind", sorted(WATCHERS))
@pytest.mark.parametrize("change", [_same_size_edit, _rename_over], ids=["same-size-same-mtime", "rename"])
def test_each_watcher_reloads(inst: Instance, kind: str, change: Callable[[Path, bytes], None]) -> None:
    make, watched, shows, other = WATCHERS[kind]
    path = watched(inst)
    new = other(inst, path)
    watcher = make(inst)
    before = shows(watcher)
    assert shows(watcher) == before  # no change, no reload
    change(path, new)
    assert shows(watcher) != before
