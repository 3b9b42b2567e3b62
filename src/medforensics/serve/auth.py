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
# each Argon2 check takes 64 MiB: a burst of sign-ins waits here instead of exhausting memory
_CHECKS = threading.BoundedSemaphore(4)
# verified against when the user does not exist, so that a wrong name takes as long as a wrong password
_DUMMY = _HASHER.hash("medforensics: no such user")


def hash_password(password: str) -> str:
    """The Argon2id hash of ``password`` (salted; PHC string)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (``None``: no such user, same cost)."""
    with _CHECKS:
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
    """Sign-in attempts per key (a user name, an address): an attempt is counted when it starts
    (:meth:`attempt`, atomically with the check, so that a burst of parallel attempts cannot all
    pass before the first is counted) and forgotten when it succeeds. More than ``attempts``
    within ``window_s`` seconds block that key until the oldest leaves the window.

    >>> limiter = LoginLimiter(2, 60.0, clock=lambda: 100.0)
    >>> limiter.attempt("user:ann", "ip:10.0.0.1"), limiter.attempt("user:ann", "ip:10.0.0.2")
    (0, 0)
    >>> limiter.attempt("user:ann", "ip:10.0.0.3")
    60
    """

    def __init__(self, attempts: int, window_s: float, clock=time.monotonic):
        self.attempts, self.window_s, self._clock = attempts, window_s, clock
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._attempts.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def attempt(self, *keys: str) -> int:
        """Count one attempt against each key and return 0, or, when any key is at its limit,
        count nothing and return the seconds until it may try again."""
        now = self._clock()
        with self._lock:
            recent = [self._recent(key, now) for key in keys]
            full = [q for q in recent if len(q) >= self.attempts]
            if full:
                return max(1, int(max(q[0] + self.window_s - now for q in full) + 0.999))
            for q in recent:
                q.append(now)
        return 0

    def succeeded(self, *keys: str) -> None:
        """The attempt just counted against ``keys`` succeeded: take it back."""
        with self._lock:
            for key in keys:
                q = self._attempts.get(key)
                if q:
                    q.pop()
                if not q:
                    self._attempts.pop(key, None)

    def clear(self) -> None:
        """Forget every attempt."""
        with self._lock:
            self._attempts.clear()
