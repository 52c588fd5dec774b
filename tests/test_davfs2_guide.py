"""docs/clients.md's davfs2 section, run as written with a real `mount.davfs` against a
live server: the root variant (`/etc/davfs2/`) and the user variant (`user,noauto` in
fstab, `~/.davfs2/`, a real unprivileged user).

The guide's shell blocks are taken from the document and run unchanged but for its
placeholders (URL, NAME, ACCOUNT, PASSWORD, P12-PASSWORD, `you`) and two lines that
change the host's packages: `apt-get install davfs2` (the tool is required instead)
and `dpkg-reconfigure davfs2` (its effect, a set-uid `mount.davfs`, is a set-uid copy
bind-mounted over it). Everything runs in a private mount namespace with a private
copy of /etc, an empty /home, /mnt, /run and davfs2's cache folder, so the guide's
writes to /etc/davfs2, /etc/fstab and /etc/group, the test user and the mounts never
reach the host. No stdin: `mount.davfs` gets no terminal, as from a script or at boot,
so the guide's secrets entries are what makes it work.

Each variant has a twin with the PKCS#12 password entry missing from the secrets file:
the mount must fail (and write nothing), which proves that entry is what unlocks the
certificate without a terminal. The CA outside the daemon's reach (under /root, as the
old guide had it) fails too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from davserver.server import DavServer
from tests.conftest import Instance
from tests.test_clients import clean_env, require_tool, share_dir
from tests.test_os_clients import require_root_namespace

pytestmark = pytest.mark.client

CLIENTS = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
DOC_URL = "https://dav.example.org:8443/files/"
TIMEOUT = 120  # seconds for one whole script (mount, write, list, unmount)
USER = "davuser"  # the unprivileged user the test creates (in its private /etc)

#: Private /etc, /home, /mnt, /run and cache; then the guide's commands. $WORK holds
#: the copies; $DOWNLOAD the files the user received (NAME.p12, davserver-ca.crt).
PRELUDE = r"""
set -euo pipefail
cp -a /etc "$WORK/etc"
mount --bind "$WORK/etc" /etc
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /home
mount -t tmpfs -o mode=0755 tmpfs /mnt
mount -t tmpfs -o mode=0775 tmpfs /var/cache/davfs2
chgrp davfs2 /var/cache/davfs2
pid=
wait_exit() {  # wait until the mount daemon $pid exited; 0 when it did
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
cleanup() {
    for m in /mnt/dav "/home/$TESTUSER/dav"; do
        if mountpoint -q "$m"; then umount.davfs "$m" >/dev/null 2>&1 || umount -l "$m" || true; fi
    done
    if [ -n "$pid" ] && ! wait_exit; then kill -KILL "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
"""


def section() -> str:
    text = CLIENTS.read_text()
    start = text.index("## Linux: davfs2 (a mounted folder)\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def sh_blocks() -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```$", section(), re.M | re.S)]


def block(containing: str) -> str:
    found = [b for b in sh_blocks() if containing in b]
    assert len(found) == 1, f"one sh block with {containing!r} in the davfs2 section"
    return found[0]


def davfs_field(value: str) -> str:
    """A value inside the guide's double quotes (davfs2.conf(5): \\ and " escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def fill(text: str, url: str, account: str, password: str, p12_password: str) -> str:
    """The guide's placeholders replaced by this test's values."""
    assert "'" not in password + p12_password  # they sit inside the guide's quoted heredocs
    for line in ("apt-get install davfs2\n",):
        assert line in text or "apt-get" not in text
        text = text.replace(line, "")
    text = text.replace(DOC_URL, url)
    text = text.replace("P12-PASSWORD", davfs_field(p12_password))
    text = text.replace("PASSWORD", davfs_field(password))
    text = text.replace("ACCOUNT", account).replace("NAME", account)
    return re.sub(r"\byou\b", USER, text)


def mark_mount(guide: str) -> str:
    """The guide block with a marker printed just before its last line, the mount: a
    twin must fail there, not at an earlier step."""
    lines = guide.rstrip("\n").split("\n")
    assert lines[-1].startswith("mount "), lines[-1]
    return "\n".join([*lines[:-1], "echo REACHED-MOUNT", lines[-1], "echo MOUNTED"]) + "\n"


def setup(inst: Instance, tmp_path: Path) -> dict[str, str]:
    for tool in ("mount.davfs", "umount.davfs", "unshare", "mountpoint", "setpriv", "useradd", "usermod"):
        require_tool(tool)
    require_root_namespace("davfs2")
    work = tmp_path / "work"
    download = work / "download"
    download.mkdir(parents=True)
    alice = inst.clients["alice"]
    shutil.copyfile(alice.p12, download / "alice.p12")
    shutil.copyfile(inst.ca_file, download / "davserver-ca.crt")
    download.chmod(0o755)
    work.chmod(0o755)
    for f in download.iterdir():
        f.chmod(0o644)
    # `dpkg-reconfigure davfs2` (Yes) makes mount.davfs set-uid root: a copy that is.
    setuid = work / "mount.davfs"
    shutil.copyfile(shutil.which("mount.davfs") or "", setuid)
    setuid.chmod(0o4755)
    return clean_env(tmp_path, WORK=str(work), DOWNLOAD=str(download), SETUID=str(setuid), TESTUSER=USER)


def run(env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", PRELUDE + script],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL, start_new_session=True)


def attempt(inst: Instance, server: DavServer, tmp_path: Path, recipe: Callable[[str, str, str, str], str],
            edit: Callable[[str], str] = lambda script: script) -> subprocess.CompletedProcess[str]:
    """Run ``edit(recipe(url, account, password, p12_password))`` for alice on the files
    share in a fresh namespace (:func:`setup`, :func:`run`); the same values are in the
    environment as URL, PASSWORD and P12_PASSWORD."""
    env = setup(inst, tmp_path)
    alice = inst.clients["alice"]
    url = f"{server.url}files/"
    env.update(URL=url, PASSWORD=alice.password, P12_PASSWORD=alice.p12_password)
    return run(env, edit(recipe(url, "alice", alice.password, alice.p12_password)))


def assert_not_mounted(inst: Instance, proc: subprocess.CompletedProcess[str], written: str) -> None:
    """The script got to the mount, the mount failed, and ``written`` never reached the share."""
    assert proc.returncode != 0 and "REACHED-MOUNT" in proc.stdout, proc.stdout + proc.stderr
    assert "MOUNTED" not in proc.stdout.replace("REACHED-MOUNT", "")
    assert not (share_dir(inst, "files") / written).exists()


ROOT_CHECK = r"""
mountpoint -q /mnt/dav
pid=$(cat /run/mount.davfs/*.pid)
echo "written by root through davfs2" >/mnt/dav/from-root.txt
ls /mnt/dav >"$WORK/listing.txt"
umount /mnt/dav
wait_exit
pid=
! mountpoint -q /mnt/dav
"""


def root_script(url: str, account: str, password: str, p12_password: str) -> str:
    guide = mark_mount(fill(block("/etc/davfs2/davfs2.conf"), url, account, password, p12_password))
    return f'cd "$DOWNLOAD"\n{guide}\n{ROOT_CHECK}'


def test_root_mount_as_documented(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    proc = attempt(inst, server, tmp_path, root_script)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REACHED-MOUNT\nMOUNTED\n" in proc.stdout
    assert (share_dir(inst, "files") / "from-root.txt").read_text() == "written by root through davfs2\n"
    assert "from-root.txt" in (tmp_path / "work" / "listing.txt").read_text()


def test_root_mount_needs_the_certificate_password_entry(inst: Instance, server: DavServer,
                                                          tmp_path: Path) -> None:
    """Without the secrets line for the PKCS#12 file there is no terminal to ask on:
    the mount fails and nothing reaches the server."""
    def without_entry(script: str) -> str:
        script = re.sub(r"^/etc/davfs2/certs/private/alice\.p12 .*\n", "", script, flags=re.M)
        assert "certs/private/alice.p12 " not in script
        return script

    assert_not_mounted(inst, attempt(inst, server, tmp_path, root_script, without_entry), "from-root.txt")


def test_root_mount_with_the_ca_under_root_fails(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """Why the guide puts the CA in /etc/davfs2/certs: the daemon (user davfs2) reads it
    after giving up root, and cannot read it from a root-only folder."""
    def ca_under_root(script: str) -> str:
        # A 0700 root folder (on the namespace's private /run) holding the CA.
        script = script.replace("trust_ca_cert davserver-ca.crt", "trust_ca_cert /run/root-only/davserver-ca.crt")
        return 'mkdir -m 0700 /run/root-only && cp "$DOWNLOAD/davserver-ca.crt" /run/root-only/\n' + script

    assert_not_mounted(inst, attempt(inst, server, tmp_path, root_script, ca_under_root), "from-root.txt")


USER_CHECK = r"""
mountpoint -q ~/dav
echo "written by $(id -un) through davfs2" >~/dav/from-user.txt
ls ~/dav >/run/out/listing.txt
umount ~/dav
for _ in $(seq 300); do [ -z "$(ls /run/mount.davfs/ 2>/dev/null)" ] && break; sleep 0.1; done
! mountpoint -q ~/dav
"""


def user_script(url: str, account: str, password: str, p12_password: str) -> str:
    admin = fill(block("usermod"), url, account, password, p12_password)
    assert "dpkg-reconfigure davfs2" in admin
    admin = "\n".join(line for line in admin.splitlines() if not line.startswith("dpkg-reconfigure davfs2"))
    user = mark_mount(fill(block("~/.davfs2/davfs2.conf"), url, account, password, p12_password))
    return (
        f'useradd --create-home --shell /bin/bash "$TESTUSER"\n'
        'mount --bind "$SETUID" "$(command -v mount.davfs)"  # what dpkg-reconfigure davfs2 (Yes) does\n'
        f"{admin}\n"
        'cp "$DOWNLOAD"/* "/home/$TESTUSER/" && chown "$TESTUSER:" "/home/$TESTUSER"/*\n'
        'mkdir -m 1777 /run/out\n'
        'cat >/run/user.sh <<\'USER_SCRIPT\'\n'
        f'set -euo pipefail\ncd\n{user}\n{USER_CHECK}\nUSER_SCRIPT\n'
        'setpriv --reuid="$TESTUSER" --regid="$TESTUSER" --init-groups '
        'env -i HOME="/home/$TESTUSER" USER="$TESTUSER" LOGNAME="$TESTUSER" PATH=/usr/bin:/bin:/usr/sbin:/sbin '
        'bash /run/user.sh\n'
    )


def test_user_mount_as_documented(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    proc = attempt(inst, server, tmp_path, user_script)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REACHED-MOUNT\nMOUNTED\n" in proc.stdout
    assert (share_dir(inst, "files") / "from-user.txt").read_text() == f"written by {USER} through davfs2\n"


def test_user_mount_needs_the_certificate_password_entry(inst: Instance, server: DavServer,
                                                          tmp_path: Path) -> None:
    def without_entry(script: str) -> str:
        script = re.sub(rf"^/home/{USER}/\.davfs2/certs/private/alice\.p12 .*\n", "", script, flags=re.M)
        assert "private/alice.p12  " not in script
        return script

    assert_not_mounted(inst, attempt(inst, server, tmp_path, user_script, without_entry), "from-user.txt")


#: The recipe this guide replaced, run as root (what `sudo mount` does): root's
#: mount.davfs never reads ~/.davfs2/, so it has no client certificate and no CA.
OLD_RECIPE = r"""
mount -t tmpfs -o mode=0700 tmpfs /root
export HOME=/root
mkdir -p ~/.davfs2 ~/dav
cp "$DOWNLOAD/alice.p12" "$DOWNLOAD/davserver-ca.crt" ~/.davfs2/ && chmod 600 ~/.davfs2/alice.p12
printf 'trust_ca_cert /root/.davfs2/davserver-ca.crt\nclientcert /root/.davfs2/alice.p12\nuse_locks 1\nbuf_size 64\n' \
    >~/.davfs2/davfs2.conf
printf '%s alice "%s"\n/root/.davfs2/alice.p12 "%s"\n' "$URL" "$PASSWORD" "$P12_PASSWORD" >~/.davfs2/secrets
chmod 600 ~/.davfs2/secrets
echo REACHED-MOUNT
mount -t davfs "$URL" ~/dav
echo MOUNTED
echo "written" >~/dav/from-root.txt
"""


def test_the_old_recipe_fails_as_root(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """The failure this guide fixes: the same files in ~/.davfs2, mounted by root, do
    not mount (no terminal to ask on, nothing written)."""
    assert_not_mounted(inst, attempt(inst, server, tmp_path, lambda *values: OLD_RECIPE), "from-root.txt")


def test_user_secrets_readable_by_others_is_refused(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """Why the guide writes ~/.davfs2/secrets under `umask 077`: davfs2 refuses a
    secrets file others can read."""
    def readable(script: str) -> str:
        return script.replace("echo REACHED-MOUNT", "chmod 0644 ~/.davfs2/secrets\necho REACHED-MOUNT")

    proc = attempt(inst, server, tmp_path, user_script, readable)
    assert_not_mounted(inst, proc, "from-user.txt")
    assert "secrets has wrong permissions" in proc.stderr
