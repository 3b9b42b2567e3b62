"""Authentication of the review service: hashed passwords, session and API secrets, roles and a
login rate limit. No framework here; :mod:`medforensics.serve.app` wires these into requests.

Passwords are hashed with Argon2id (argon2-cffi, its default parameters). Session cookies and API
tokens are random secrets of which the database keeps only the SHA-256, so a copy of the
database does not log anyone in.

>>> h = hash_password("correct horse battery")
>>> verify_password(h, "correct horse battery"), verify_password(h, "wrong")
(True, False)
>>> allowed("reviewer", "viewer"), allowed("viewer", "reviewer")
(True, False)
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..core import MedForensicsError

__all__ = ["ROLES", "LoginLimiter", "allowed", "check_password", "hash_password", "new_secret", "secret_hash",
           "verify_password"]

#: Roles, each allowed what the ones before it are.
ROLES = ("viewer", "reviewer", "admin")
#: Shortest password accepted.
MIN_PASSWORD = 10

_HASHER = PasswordHasher()
# verified against when the user does not exist, so that a wrong name takes as long as a wrong password
_DUMMY = _HASHER.hash("medforensics: no such user")


def hash_password(password: str) -> str:
    """The Argon2id hash of ``password`` (salted; PHC string)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (``None``: no such user, same cost)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password(password: str, user: str = "") -> str:
    """``password`` if it may be set, else an error saying why (length, equal to the name)."""
    if len(password) < MIN_PASSWORD:
        raise MedForensicsError("password", f"needs at least {MIN_PASSWORD} characters")
    if user and password.strip().lower() == user.strip().lower():
        raise MedForensicsError("password", "must not be the user's name")
    return password


def new_secret() -> tuple[str, str]:
    """A new random secret (256 bits, URL-safe) and the hash that the database keeps."""
    token = secrets.token_urlsafe(32)
    return token, secret_hash(token)


def secret_hash(token: str) -> str:
    """The SHA-256 (hex) under which a session or API token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def allowed(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (roles are ordered: viewer < reviewer < admin)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


class LoginLimiter:
    """Failed logins per key (a user name, an address): more than ``attempts`` within
    ``window_s`` seconds block that key until the oldest failure leaves the window.

    >>> limiter = LoginLimiter(2, 60.0, clock=lambda: 100.0)
    >>> limiter.failed("user:ann"); limiter.failed("user:ann")
    >>> limiter.retry_after("user:ann", "ip:10.0.0.1")
    60
    """

    def __init__(self, attempts: int, window_s: float, clock=time.monotonic):
        self.attempts, self.window_s, self._clock = attempts, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> int:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= self.attempts:
                    wait = max(wait, q[0] + self.window_s - now)
                if not q:
                    self._failures.pop(key, None)
        return int(wait + 0.999) if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        """Count one failed attempt against each key."""
        now = self._clock()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def clear(self) -> None:
        """Forget every failure."""
        with self._lock:
            self._failures.clear()

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures (a user who got in; the address keeps its count)."""
        with self._lock:
            self._failures.pop(key, None)
