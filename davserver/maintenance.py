"""What runs once per instance, not once per process: the sweep of leftover upload
files, the CRL re-signing, the server certificate's re-issue and the expiry warnings.

The single-process server (``server.workers: 1``) runs them itself (server.py
``DavServer._maintain``; the sweep once its sockets are bound); with worker processes
the supervisor (supervisor.py) runs them once (the sweep after its binds, after each
worker that dies and every ``state.sweep_seconds``), and a worker never does: two workers re-signing the CRL or
re-issuing the certificate at once would each write the files. The sweep itself is safe
anywhere, any time: it removes only temp files whose writer's lock is gone (fs.py
``sweep_temp_files``).
What each process keeps doing on its own (the server certificate's reload check,
re-reading accounts.yaml and the CRL, handing free memory back) stays in
``DavServer._maintain``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .cert_lifecycle import check_expiry, reissue_server_certificate
from .config import Config
from .fs import sweep_temp_files
from .revocation import RevocationList

__all__ = ["InstanceMaintenance", "sweep_leftover_uploads"]

log = logging.getLogger("davserver.maintenance")

#: How often the server certificate is re-issued when due and expiry is warned about.
DAILY_SECONDS = 86400.0
#: How often the CRL is re-signed when due (revocation.py ``keep_fresh``).
CRL_SECONDS = 3600.0


def sweep_leftover_uploads(config: Config) -> int:
    """Remove the temp files of uploads cut off by a crash from every share; returns how
    many. A file some live process is writing holds that process's lock and stays, so
    this may run while uploads are in flight, in this or any other process (fs.py
    ``sweep_temp_files``). With a shared store other nodes may be uploading into the
    same folders over a network filesystem whose locks this machine may not see (a mount
    with local-only locks), so there only files also untouched for ``state.sweep_age_seconds``
    (default 300) go. A
    share folder that is missing is left to the server's own check (server.py
    ``check_shares``)."""
    total = 0
    for name, share in config.shares.items():
        if not share.path.is_dir():
            continue
        age = 0.0 if config.state.backend == "sqlite" else config.state.sweep_age_seconds
        swept = sweep_temp_files(share.path, older_than=age)
        if swept:
            log.info("share %r: removed %d unfinished upload(s)", name, swept)
        total += swept
    return total


class InstanceMaintenance:
    """The once-per-instance rounds: at start and daily re-issue the server certificate
    when due and warn about certificates that lapse soon (cert_lifecycle.py); hourly keep
    the CRL fresh (revocation.py). Call :meth:`run_due` every few seconds with
    ``time.monotonic()``; it does what is due and never raises (failures are logged and
    tried again at the next round). `on_reissue` is called after the server certificate
    was re-issued (the single-process server reloads it at once; workers notice it within
    ``tls.reload_seconds``). Every ``state.sweep_seconds`` (counted from the first call,
    which follows the start's own sweep) leftover uploads are swept again
    (:func:`sweep_leftover_uploads`), so a file of a crash that a sweep had to keep for its
    age (redis) goes within ``state.sweep_age_seconds + state.sweep_seconds`` of its last
    write, without a restart."""

    def __init__(self, config: Config, revocations: RevocationList,
                 on_reissue: Callable[[], object] | None = None) -> None:
        self.config = config
        self.revocations = revocations
        self.on_reissue = on_reissue
        self._lifecycle_due = 0.0
        self._crl_due = 0.0
        self._sweep_due: float | None = None

    def run_due(self, now: float | None = None) -> None:
        """Run the rounds that are due at `now` (monotonic seconds; default: now)."""
        now = time.monotonic() if now is None else now
        if self._sweep_due is None:
            self._sweep_due = now + self.config.state.sweep_seconds
        elif now >= self._sweep_due:
            self._sweep_due = now + self.config.state.sweep_seconds
            _logging_failure("sweeping leftover uploads failed", lambda: sweep_leftover_uploads(self.config))
        if now >= self._lifecycle_due:
            self._lifecycle_due = now + DAILY_SECONDS
            _logging_failure("certificate lifecycle maintenance failed", self._certificate_lifecycle)
        if now >= self._crl_due:
            self._crl_due = now + CRL_SECONDS
            _logging_failure("CRL maintenance failed",
                             lambda: self.revocations.keep_fresh(self.config.home.certs_dir))

    def _certificate_lifecycle(self) -> None:
        """Re-issue the server certificate when due (then `on_reissue`), warn about expiry."""
        if reissue_server_certificate(self.config) == "reissued" and self.on_reissue is not None:
            self.on_reissue()
        check_expiry(self.config)


def _logging_failure(failure: str, work: Callable[[], object]) -> None:
    """Run `work`; any exception it raises is logged as `failure` (with its traceback) and
    not raised: maintenance must never take the server down."""
    try:
        work()
    except Exception:  # noqa: BLE001 - maintenance must never take the server down
        log.exception(failure)
