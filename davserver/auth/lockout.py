"""Sign-in lockout: failures counted per factor, per (account, certificate), and
per address — kept apart from WebDAV locks, which are another thing entirely.

The rules (NIST SP 800-63B §5.2.2 asks that consecutive failures be limited):

* **Per factor.** Every failure is counted for the canonical account (the name
  in the accounts file that the certificate maps to — never the user name the
  client typed), the certificate's fingerprint, and the factor that failed:
  ``password`` (wrong password, a Basic user that is not the certificate's
  account, an undecodable header) or ``totp`` (wrong or replayed code). A
  factor's count is cleared only by a success of *that* factor: a right password
  never forgives wrong codes, so with the right password and wrong codes the
  count keeps growing across credential-cache expiries.
* **Repeats count once.** A failure that repeats one already counted for the same
  account, certificate and factor within ``throttle.window_seconds`` (the caller
  passes a keyed digest of what was tried: see `Authenticator._failed`) is not
  counted again, here or account-wide: it tests no new guess. Clients retry one
  sign-in many times (Windows' Mini-Redirector: eleven PROPFINDs per ``net use``,
  sigoden/dufs#307), which must not lock the user out. ``throttle.count_repeats:
  true`` counts every failure, as before. TOTP failures always count, each one: a
  wrong code tells an attacker nothing about the password and repeats of one code
  are rare from clients, so nothing is won by forgiving them, and the code guessing
  defence stays exactly as it was.
* **Per (account, certificate).** When either factor reaches
  ``throttle.lock_after`` failures within ``throttle.window_seconds``, that
  account+certificate is locked out for ``throttle.lock_seconds``.
* **Per account, without a window.** Failures of one factor over all the
  account's certificates are also counted with no time window; at
  ``throttle.max_consecutive_failures`` (100, NIST's ceiling) the whole account
  is locked out until an administrator runs `davserver user unlock NAME`. A
  success of that factor (with any certificate) starts the count again. Without
  it, ten guesses every lockout period would go on for ever.
* **Per address.** An address is locked out when ``throttle.address_lock_after``
  distinct accounts have been locked out from it within the window. One account
  counts once however many certificates it uses, so the holder of one account's
  certificates cannot lock out everybody else behind the same NAT, and a few
  users' typing mistakes never lock out an address; an address that keeps
  locking out different accounts (someone holding many stolen certificates)
  does get locked out.

`Lockouts` applies these rules to a `LockoutStore` driver (store/base.py; the state
store's ``lockouts``: store/sqlite_lockout.py or store/redis_lockout.py), the shape of
SFTPGo's Defender (internal/common/defender.go: the rules, over a memory or a provider
driver). It is the one door to lockouts: the guard's sign-in (auth/core.py), the
enrolment page's count of unknown links (enrolment_pages.py), the pending revocation of
renewed certificates (renewal.py) and `davserver user unlock` / `user remove` (cli.py).

Store keys (exact strings, compared case-sensitively by both drivers):
``acct:<account>:<fingerprint>`` for the lockout,
``acct:<account>:<fingerprint>:<factor>`` for the counters,
``acct:<account>:<fingerprint>:<factor>:seen:<digest>`` for the failures already counted,
``acct:<account>:*`` and ``acct:<account>:*:<factor>`` for the account-wide ones, ``addr:<address>``
for the address (its canonical text form, see `address_key`).
`davserver user unlock NAME` clears the ``acct:NAME:`` prefix,
`davserver user unlock --address ADDR` clears ``addr:ADDR``.
The enrolment listener counts unknown invitation links at ``enrol:addr:<address>:unknown``
and locks out ``enrol:addr:<address>``. A renewal that will revoke the old certificate at
the new one's first use is noted as lockout records ``renewal:<new fingerprint>`` and
``renewal:<new fingerprint>:<old serial>`` held until the new certificate expires (they
were kept there before the driver existed, so the notes of running installations stay).
"""

from __future__ import annotations

from typing import Literal

from ..addresses import client_block
from ..config import ThrottleConfig
from ..store.base import LockoutStore

__all__ = ["FACTOR_OF", "Factor", "Lockouts", "account_key", "account_prefix", "address_key"]

Factor = Literal["password", "totp"]

#: Which factor a counted failure belongs to; reasons not listed are not counted.
FACTOR_OF: dict[str, Factor] = {
    "bad_password": "password",
    "user_mismatch": "password",
    "bad_auth_header": "password",
    "bad_otp": "totp",
    "otp_replayed": "totp",
}


def account_prefix(account: str) -> str:
    """The prefix every lockout key of `account` (a canonical account name) starts with."""
    return f"acct:{account}:"


def account_key(account: str, fingerprint: str) -> str:
    """The lockout key of `account` (canonical name) with the certificate of `fingerprint`
    (hex SHA-256), or of all its certificates when `fingerprint` is ``*``."""
    return f"{account_prefix(account)}{fingerprint}"


#: Stands for every certificate of the account in its account-wide keys (a fingerprint is hex).
_ALL_CERTIFICATES = "*"
#: The account-wide count has no window: long enough to outlive any deployment's patience.
_NO_WINDOW = 10 * 365 * 86400.0


def address_key(peer: str) -> str:
    """The lockout key of a peer address (REMOTE_ADDR): ``addr:`` and its client block
    (addresses.client_block: an IPv6 peer by its /64, one subscriber's block, as every
    per-address bound counts it; otherwise one holder of several accounts' certificates
    would take a fresh address of the block for every account and never reach the
    address lockout). Text that is no address is kept as is."""
    return f"addr:{client_block(peer)}"


class Lockouts:
    """The sign-in lockout rules over the driver `store` (a `LockoutStore`: the state
    store's ``lockouts``), with the limits of `throttle` (``throttle.*``; the defaults
    when not given, enough for unlocking and renewal notes). Times are POSIX seconds
    (float) passed in. Every method raises StoreUnavailable when the store cannot be
    reached; callers fail closed."""

    def __init__(self, store: LockoutStore, throttle: ThrottleConfig | None = None) -> None:
        self.store = store
        self.throttle = throttle if throttle is not None else ThrottleConfig()

    # --- sign-in (auth/core.py) ----------------------------------------------------------

    def is_locked_out(self, account: str, fingerprint: str, peer: str, now: float) -> bool:
        """Whether the account+certificate, the whole account or the address `peer`
        (REMOTE_ADDR; "" for none) is locked out at `now` (one store round trip)."""
        keys = [account_key(account, fingerprint), account_key(account, _ALL_CERTIFICATES)]
        keys += [address_key(peer)] if peer else []
        return self.store.any_locked_out(keys, now)

    def fail(self, account: str, fingerprint: str, factor: Factor, peer: str, now: float, seen: str = "") -> float:
        """Count one failure of `factor`; lock out past the limits. Returns the seconds to
        hold the answer back (0 for the first ``delay_after`` failures, then doubling).

        `seen` (hex, a keyed digest of what was tried; "" when unknown) makes a repeat of
        a failure already counted within the window count nothing and wait 0 seconds."""
        t = self.throttle
        key = account_key(account, fingerprint)
        repeat_key = f"{key}:{factor}:seen:{seen}"
        if seen and not t.count_repeats and self.store.add_failure(repeat_key, now, t.window_seconds) > 1:
            return 0.0
        count = self.store.add_failure(f"{key}:{factor}", now, t.window_seconds)
        if count >= t.lock_after:
            self.store.set_lockout(key, now + t.lock_seconds)
            if peer:
                addr = address_key(peer)
                if self.store.note_lockout(addr, account, now, t.window_seconds) >= t.address_lock_after:
                    self.store.set_lockout(addr, now + t.lock_seconds)
        if t.max_consecutive_failures:
            everywhere = account_key(account, _ALL_CERTIFICATES)
            if self.store.add_failure(f"{everywhere}:{factor}", now, _NO_WINDOW) >= t.max_consecutive_failures:
                self.store.set_lockout(everywhere, now + _NO_WINDOW)
        if count > t.delay_after:
            return float(min(t.max_delay_seconds, t.base_delay_seconds * 2 ** (count - t.delay_after - 1)))
        return 0.0

    def succeed(self, account: str, fingerprint: str, factor: Factor) -> None:
        """A success of `factor` clears that factor's counts (this certificate's and the
        account-wide one), and only that factor's."""
        self.store.clear_failures(f"{account_key(account, fingerprint)}:{factor}")
        self.store.clear_failures(f"{account_key(account, _ALL_CERTIFICATES)}:{factor}")

    # --- the administrator (cli.py) ------------------------------------------------------

    def unlock_account(self, account: str) -> int:
        """Lift every lockout of `account` (the exact, case-sensitive name: all its
        certificates and the account-wide one) and forget its failure counts (`davserver
        user unlock NAME`, `user remove`). Returns how many lockout records were removed."""
        return self.store.clear_lockouts_by_prefix(account_prefix(account))

    def unlock_address(self, address: str) -> int:
        """Lift the lockout of the peer `address` (any spelling `address_key` accepts: an
        IPv4-mapped IPv6 address is its IPv4 one, an IPv6 one stands for its /64) and
        forget what counted toward it (`davserver user unlock --address`). Returns 1 when
        a lockout was removed, else 0."""
        return self.store.clear_lockout(address_key(address))

    # --- unknown enrolment links (enrolment_pages.py) ------------------------------------

    @staticmethod
    def _enrolment_key(peer: str) -> str:
        return f"enrol:{address_key(peer)}"

    def is_enrolment_locked_out(self, peer: str, now: float) -> bool:
        """Whether the address `peer` may not try enrolment links at `now` (too many
        unknown ones)."""
        return self.store.any_locked_out([self._enrolment_key(peer)], now)

    def fail_enrolment(self, peer: str, now: float) -> None:
        """Count one unknown enrolment link from `peer`; at ``throttle.lock_after`` within
        ``throttle.window_seconds`` the address is locked out of enrolment for
        ``throttle.lock_seconds``."""
        t = self.throttle
        key = self._enrolment_key(peer)
        if self.store.add_failure(f"{key}:unknown", now, t.window_seconds) >= t.lock_after:
            self.store.set_lockout(key, now + t.lock_seconds)

    # --- renewed certificates whose predecessor goes at first use (renewal.py) -----------

    def note_renewal(self, fingerprint: str, serial: str, until: float) -> None:
        """Note that the certificate of `fingerprint` (hex SHA-256) renewed the one of
        `serial` (hex), until `until` (POSIX seconds: the new certificate's end)."""
        self.store.set_lockout(f"renewal:{fingerprint}:{serial}", until)
        self.store.set_lockout(f"renewal:{fingerprint}", until)

    def renewal_pending(self, fingerprint: str, now: float) -> bool:
        """Whether the certificate of `fingerprint` renewed another still to be revoked."""
        return self.store.lockout_until(f"renewal:{fingerprint}", now) is not None

    def renewed(self, fingerprint: str, serial: str, now: float) -> bool:
        """Whether the certificate of `fingerprint` renewed the one of `serial`."""
        return self.store.lockout_until(f"renewal:{fingerprint}:{serial}", now) is not None

    def clear_renewal(self, fingerprint: str) -> None:
        """Forget the renewal notes of the certificate of `fingerprint` (its predecessor
        was dealt with)."""
        self.store.clear_lockouts_by_prefix(f"renewal:{fingerprint}")
