"""Shares whose folders overlap: one share's files reached under another share's rules.

Access is decided per share (guard.py: the first segment of the path names the share
and its ``require``, ``readers``, ``writers``, ``read_only``...). When share ``nest``
has folder ``data`` and share ``secure`` has ``data/secure``, ``/nest/secure/x`` is the
file ``/secure/x`` under ``nest``'s rules: a share needing a code would be read and
written with the password alone. So two shares whose real folders (symlinks resolved)
are the same, or one inside the other, must agree on every per-share setting but the
name and the folder; if they do the overlap is only a warning (two names for the same
files), else the server refuses to start (server.py ``check_shares``) and
``davserver check`` reports an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from .config import Config, ShareConfig

__all__ = ["ShareOverlap", "access_settings", "share_overlaps"]


@dataclass(frozen=True)
class ShareOverlap:
    """Shares ``outer`` and ``inner`` (keys under ``shares:``), ``inner``'s real folder the
    same as or inside ``outer``'s; ``differing`` names the access settings they differ in
    (empty: they agree, a warning only)."""

    outer: str
    inner: str
    outer_path: Path
    inner_path: Path
    differing: tuple[str, ...]

    @property
    def refused(self) -> bool:
        """Whether the server refuses to start for it (the shares differ in access)."""
        return bool(self.differing)

    def message(self) -> str:
        """One line naming both share keys, the folders and the settings that differ."""
        how = "is the same folder as" if self.outer_path == self.inner_path else "contains"
        where = (f"shares.{self.outer}.path ({self.outer_path}) {how} "
                 f"shares.{self.inner}.path ({self.inner_path})")
        if not self.differing:
            return f"{where}: the same files under two names (their access settings are identical)"
        return (f"{where} but they differ in {', '.join(self.differing)}: "
                f"/{self.outer}/ would reach shares.{self.inner}'s files without its rules")

    def fix(self) -> str:
        """How to put it right."""
        return (f"give shares.{self.outer} and shares.{self.inner} folders that do not contain one another, "
                "or the same access settings")


def access_settings() -> tuple[str, ...]:
    """Every ShareConfig field but ``name`` and ``path``: each one decides something about
    a request to the share, so a new per-share setting counts without a change here."""
    return tuple(f.name for f in fields(ShareConfig) if f.name not in ("name", "path"))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def share_overlaps(config: Config) -> list[ShareOverlap]:
    """Each pair of shares whose real folders (``os.path.realpath``) are equal or nested,
    in the order of ``config.shares``, the containing share as ``outer`` (the first
    named when the folders are the same). Never raises: a missing folder is compared by
    the path it names."""
    shares = list(config.shares.values())
    real = {s.name: _real(s.path) for s in shares}
    found: list[ShareOverlap] = []
    for i, a in enumerate(shares):
        for b in shares[i + 1:]:
            pa, pb = real[a.name], real[b.name]
            if pa == pb or pa in pb.parents:
                outer, inner = a, b
            elif pb in pa.parents:
                outer, inner = b, a
            else:
                continue
            differing = tuple(k for k in access_settings() if getattr(a, k) != getattr(b, k))
            found.append(ShareOverlap(outer.name, inner.name, real[outer.name], real[inner.name], differing))
    return found
