"""Password hashes for the users of ``router.toml`` (``[users.<name>] password = "scrypt:..."``).

Only hashes are stored, never passwords: :func:`hash_password` makes one with the standard library's
:func:`hashlib.scrypt` (``coordinator token password`` prints one), :func:`verify_password` checks a password
against it in constant time. The format names its parameters, so they can be raised later without breaking
the hashes already in files::

    scrypt:<N>:<r>:<p>:<salt, base64>:<key, base64>       N = 2**14, r = 8, p = 1, 16-byte salt, 32-byte key

(about 16 MiB and 50 ms per check: the usual parameters for interactive sign-in). :func:`check_hash` says what
is wrong with a value that is not such a hash (the config's validation uses it, so a password written in
clear is refused, naming the user). Nothing here does I/O; a check is CPU-bound, so the router runs it in a
worker thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os

__all__ = ["hash_password", "verify_password", "check_hash", "dummy_hash", "MIN_LENGTH"]

_N, _R, _P, _SALT, _KEY = 2 ** 14, 8, 1, 16, 32
#: Passwords shorter than this are refused by :func:`hash_password`.
MIN_LENGTH = 8
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``scrypt:...`` hash of ``password`` (ValueError if it is shorter than :data:`MIN_LENGTH`)."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters, got {len(password)}")
    salt = os.urandom(_SALT) if salt is None else salt
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_KEY, maxmem=_MAXMEM)
    return f"scrypt:{_N}:{_R}:{_P}:{_b64(salt)}:{_b64(key)}"


def _parse(value: str) -> tuple[int, int, int, bytes, bytes]:
    parts = value.split(":")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a password hash (scrypt:N:r:p:salt:key)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("not a password hash (scrypt:N:r:p:salt:key with numbers and base64)") from None
    if n < 2 ** 10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r * p > _MAXMEM:
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} are out of range (N a power of 2 >= 1024)")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("the salt or the key of the hash is too short")
    return n, r, p, salt, key


def check_hash(value: str) -> str | None:
    """None if ``value`` is a usable hash; else what is wrong with it."""
    try:
        _parse(value)
    except ValueError as exc:
        return str(exc)
    return None


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the hash ``stored`` (constant-time comparison; False for a bad hash)."""
    try:
        n, r, p, salt, key = _parse(stored)
    except ValueError:
        return False
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=_MAXMEM)
    return hmac.compare_digest(got, key)


@functools.lru_cache(maxsize=1)
def dummy_hash() -> str:
    """A hash to check against when the user name is unknown, so an unknown name costs as long as a wrong
    password (made once, when first needed)."""
    return hash_password("not a password of anyone", salt=b"\0" * _SALT)
