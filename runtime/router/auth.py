"""Who is calling, and what they may do: JWTs for operators and services, bound credentials for edges.

Operators and services present a JWT (``Authorization: Bearer <jwt>``; browsers, which cannot set headers on a
WebSocket, may pass ``?access_token=`` instead). It is verified with PyJWT: HS256 against the configured
secret, RS256 and EdDSA against the configured public keys or the JWKS URL (:class:`jwt.PyJWKClient`); the
algorithm comes from the key, never from the token alone (an RS256 public key is never used as an HS256
secret). ``exp`` is required, ``nbf`` and ``aud`` are checked, ``iss`` when configured. Claims::

    sub          who (the audit's user)
    can_control  edge ids the holder may command, or "*"
    can_view     edge ids the holder may only watch (status frames, GET), or "*"; can_control implies it
    ses          set on the session tokens the router itself signs when a ``[users]`` user signs in to the
                 operator page (:mod:`.api_login`; HS256 with ``[ui] session_secret``, else ``hs256_secret``):
                 such a token is refused once its user is no longer in ``[users]``

An edge presents either the per-edge secret from ``[edges]`` (plain or its ``sha256:`` digest in the file) or
a JWT with ``role = "edge"`` and ``sub = "edge:<edge_id>"``. Either names exactly one edge: the edge's
``hello`` (and the ``/ws/edge/<id>`` path, when used) must name the same one, so a credential for edge A
cannot connect as edge B.

Every refusal raises :class:`AuthError` with a code (``unauthorized``, ``forbidden``, ``wrong_edge``) and a
message that says what was wrong (expired, bad signature, wrong audience, ...), for the error frame and the
audit. :func:`mint` and the ``*_claims`` helpers make tokens for development and tests (``coordinator token``).

Threads: verification runs on the router's loop; a JWKS fetch (blocking HTTP in PyJWT) runs in a worker
thread (``asyncio.to_thread``), and PyJWKClient caches the keys it fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Iterable

import jwt

from runtime.core.errors import ConfigurationError

from .config import AuthConfig, RouterConfig

__all__ = ["ALL", "SESSION_CLAIM", "AuthError", "Principal", "Authenticator", "mint", "user_claims", "edge_claims",
           "secret_digest"]

#: "every edge" in can_control / can_view.
ALL = "*"
#: Marks the session tokens the router signs at a password sign-in (:mod:`.api_login`): such a token is only
#: good while its user is still in ``[users]``.
SESSION_CLAIM = "ses"
_ASYMMETRIC = ("RS256", "EdDSA")


class AuthError(Exception):
    """A refused credential or action: ``code`` for the error frame, a message that says why."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(message)


def _edge_set(value: Any, claim: str) -> frozenset[str] | str:
    if value is None:
        return frozenset()
    if value == ALL:
        return ALL
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ALL if ALL in value else frozenset(value)
    raise AuthError("unauthorized", f"claim {claim} must be a list of edge ids or \"*\", got {value!r}")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user or service (``edge_id`` None) or an edge."""

    subject: str
    control: frozenset[str] | str = frozenset()
    view: frozenset[str] | str = frozenset()
    edge_id: str | None = None

    def may_control(self, edge_id: str) -> bool:
        return self.edge_id is None and (self.control == ALL or edge_id in self.control)

    def may_view(self, edge_id: str) -> bool:
        return self.may_control(edge_id) or (self.edge_id is None and (self.view == ALL or edge_id in self.view))

    @property
    def views_all(self) -> bool:
        return self.edge_id is None and ALL in (self.control, self.view)

    def viewable(self) -> frozenset[str] | str:
        """The edges this principal may view: a set, or :data:`ALL`."""
        if self.views_all:
            return ALL
        assert not isinstance(self.control, str) and not isinstance(self.view, str)
        return self.control | self.view


def secret_digest(secret: str) -> str:
    """How an edge secret may be written in ``[edges]`` instead of in clear: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class Authenticator:
    """Verifies tokens and edge credentials against one router's ``[auth]`` and ``[edges]``."""

    def __init__(self, config: RouterConfig) -> None:
        self.auth: AuthConfig = config.auth
        self._keys: list[tuple[str, str | None, Any]] = []
        for k in self.auth.public_keys:
            pem = k.pem if k.pem is not None else config.path(k.path or "").read_text(encoding="utf-8")
            self._keys.append((k.alg, k.kid, _public_key(pem, k.alg)))
        #: HS256 keys: the configured secret, and the operator page's session secret when it has its own.
        self._hs256 = [k for k in dict.fromkeys((self.auth.hs256_secret, config.ui.session_secret)) if k]
        self._users = frozenset(config.users)
        self._jwks = jwt.PyJWKClient(self.auth.jwks_url, cache_keys=True, lifespan=300, timeout=5) \
            if self.auth.jwks_url else None
        #: sha256 hex of each edge secret -> edge id
        self._edge_secrets: dict[str, str] = {}
        for edge_id, secret in config.edges.items():
            digest = secret.removeprefix("sha256:") if secret.startswith("sha256:") else \
                hashlib.sha256(secret.encode()).hexdigest()
            self._edge_secrets[digest.lower()] = edge_id

    # ---- tokens

    async def _key_for(self, token: str) -> tuple[Iterable[Any], str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("unauthorized", f"malformed token: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg == "HS256":
            if not self._hs256:
                raise AuthError("unauthorized", "HS256 tokens are not accepted by this router")
            return self._hs256, alg
        if alg not in _ASYMMETRIC:
            raise AuthError("unauthorized", f"token algorithm {alg!r} is not accepted (HS256, RS256, EdDSA)")
        keys = [key for a, k, key in self._keys if a == alg and (kid is None or k is None or k == kid)]
        if not keys and self._jwks is not None:
            try:
                jwk = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWTError as exc:
                raise AuthError("unauthorized", f"no JWKS key for this token: {exc}") from None
            keys = [jwk.key]
        if not keys:
            raise AuthError("unauthorized", f"no {alg} key configured" + (f" with kid {kid!r}" if kid else ""))
        return keys, alg

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; AuthError saying what is wrong otherwise."""
        keys, alg = await self._key_for(token)
        problem = "bad signature"
        for key in keys:
            try:
                return jwt.decode(token, key, algorithms=[alg], audience=self.auth.audience,
                                  issuer=self.auth.issuer, leeway=self.auth.leeway_s,
                                  options={"require": ["exp", "sub"]})
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                problem = "token expired"
            except jwt.ImmatureSignatureError:
                problem = "token not valid yet (nbf is in the future)"
            except jwt.InvalidAudienceError:
                problem = f"wrong audience (this router is {self.auth.audience!r})"
            except jwt.InvalidIssuerError:
                problem = f"wrong issuer (this router accepts {self.auth.issuer!r})"
            except jwt.MissingRequiredClaimError as exc:
                problem = f"token lacks the {exc.claim!r} claim"
            except jwt.PyJWTError as exc:
                problem = f"invalid token: {exc}"
            break
        raise AuthError("unauthorized", problem)

    async def user(self, authorization: str | None, query_token: str | None = None) -> Principal:
        """The operator or service behind an ``Authorization`` header (or a query token)."""
        token = _bearer(authorization) or query_token
        if not token:
            raise AuthError("unauthorized", "no token (send Authorization: Bearer <jwt>)")
        claims = await self.claims(token)
        if claims.get("role") == "edge":
            raise AuthError("forbidden", "an edge credential cannot act as a user", 403)
        if claims.get(SESSION_CLAIM) and str(claims["sub"]) not in self._users:
            raise AuthError("unauthorized", f"user {claims['sub']!r} is no longer in [users]: sign in again")
        return Principal(subject=str(claims["sub"]), control=_edge_set(claims.get("can_control"), "can_control"),
                         view=_edge_set(claims.get("can_view"), "can_view"))

    async def edge(self, authorization: str | None) -> Principal:
        """The edge behind an ``Authorization`` header: its secret or its edge JWT."""
        token = _bearer(authorization)
        if not token:
            raise AuthError("unauthorized", "no edge credential (send Authorization: Bearer <credential>)")
        if _looks_like_jwt(token):
            claims = await self.claims(token)
            sub = str(claims["sub"])
            if claims.get("role") != "edge" or not sub.startswith("edge:") or len(sub) <= 5:
                raise AuthError("forbidden", "not an edge credential (needs role \"edge\" and sub "
                                "\"edge:<id>\")", 403)
            edge_id = sub[5:]
        else:
            digest = hashlib.sha256(token.encode()).hexdigest()
            found = self._edge_secrets.get(digest)  # keyed by the digest of a high-entropy secret
            if found is None:
                raise AuthError("unauthorized", "unknown edge credential")
            edge_id = found
        return Principal(subject=f"edge:{edge_id}", edge_id=edge_id)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _public_key(pem: str, alg: str) -> Any:
    """A PEM public key, checked to be of the kind ``alg`` needs (RSA for RS256, Ed25519/Ed448 for EdDSA)."""
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigurationError(f"auth.public_keys: not a PEM public key: {exc}") from None
    kinds = (rsa.RSAPublicKey,) if alg == "RS256" else (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
    if not isinstance(key, kinds):
        raise ConfigurationError(f"auth.public_keys: a {type(key).__name__} cannot verify {alg} tokens")
    return key


# ---- minting (development and tests)

def user_claims(sub: str, audience: str, *, control: Iterable[str] | str = (), view: Iterable[str] | str = (),
                ttl_s: float = 3600.0, not_before_s: float | None = None, issuer: str | None = None,
                now: float | None = None) -> dict[str, Any]:
    """The claims of an operator or service token."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "aud": audience, "iat": int(now), "exp": int(now + ttl_s),
                              "can_control": control if isinstance(control, str) else list(control),
                              "can_view": view if isinstance(view, str) else list(view)}
    if not_before_s is not None:
        claims["nbf"] = int(now + not_before_s)
    if issuer:
        claims["iss"] = issuer
    return claims


def edge_claims(edge_id: str, audience: str, *, ttl_s: float = 365 * 86400.0, issuer: str | None = None,
                now: float | None = None) -> dict[str, Any]:
    """The claims of an edge credential (a JWT bound to one edge)."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": f"edge:{edge_id}", "role": "edge", "aud": audience, "iat": int(now),
                              "exp": int(now + ttl_s)}
    if issuer:
        claims["iss"] = issuer
    return claims


def mint(claims: dict[str, Any], key: Any, alg: str = "HS256", kid: str | None = None) -> str:
    """A signed JWT: ``key`` is the HS256 secret or a private key (PEM text or a cryptography key)."""
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
