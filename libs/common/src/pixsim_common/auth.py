"""Caller identity from a JWT signed with an asymmetric key.

Tokens arrive as `authorization: Bearer <jwt>` metadata. They are verified against a PEM
public key or a JWKS URL from settings; only asymmetric algorithms are accepted, so a service
that can verify a token can never mint one. The identity of the current call is available
to handlers through `current_identity()`, and is forwarded on service-to-service calls by
passing `identity.token` on.

Where no caller is present (work started by an event), a service acts with a workload token
of its own (`WorkloadSigner`): issued by that service's key, acting (`act`) on behalf of the
user it works for (`sub`), with a narrow `scope`, living minutes. A verifier trusts such
tokens only from the issuer and key it was given (`WorkloadTrust`), and the gRPC guard lets
them call only the methods that declare their scope. The user's token is never stored.
"""

from __future__ import annotations

import contextvars
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from pixsim_common.errors import PermissionDenied, Unauthenticated, Unavailable

ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: frozenset[str]
    token: str
    # A workload token's: what it may do, and the service acting for `user_id`.
    scopes: frozenset[str] = frozenset()
    actor: str = ""

    @property
    def is_workload(self) -> bool:
        return bool(self.actor)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    @property
    def resource_name(self) -> str:
        return f"users/{self.user_id}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this call needs the admin role", reason="ADMIN_REQUIRED")


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "pixsim_identity", default=None
)


def current_identity() -> Identity:
    """The caller of the RPC being handled; raises if the call was not authenticated."""
    identity = _current.get()
    if identity is None:
        raise Unauthenticated("no caller identity", reason="MISSING_TOKEN")
    return identity


def set_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    _current.reset(token)


# Which algorithms a key of each type can verify: a token naming any other is refused
# before its signature is looked at (an RS256 token against an Ed25519 key is simply wrong).
def algorithms_for(key: Any) -> list[str]:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        return [by_curve[key.curve.name]] if key.curve.name in by_curve else []
    return []


MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 256
MAX_ROLES = 32
MAX_ROLE_CHARS = 64


def _printable(value: object, limit: int) -> bool:
    """A claim we store or log: non-empty text of at most `limit` characters, no control
    characters (NUL among them, which PostgreSQL refuses) and no lone surrogates."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_token(why: str) -> Unauthenticated:
    return Unauthenticated(f"invalid token: {why}", reason="BAD_TOKEN")


@dataclass(frozen=True)
class WorkloadTrust:
    """Workload tokens this service accepts: from `issuer`, signed by `public_key`."""

    issuer: str
    public_key: str
    max_lifetime_seconds: float = 600.0


MAX_SCOPES = 8


class TokenVerifier:
    """Verifies bearer tokens with a public key or a JWKS URL (and workload tokens with the
    key of the service that issues them). Whatever a token holds, the answer is an identity
    or UNAUTHENTICATED (UNAVAILABLE only while the JWKS is away)."""

    def __init__(
        self,
        *,
        public_key: str = "",
        jwks_url: str = "",
        issuer: str,
        audience: str,
        leeway_seconds: float = 5.0,
        max_lifetime_seconds: float = 24 * 3600,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        workload: WorkloadTrust | None = None,
    ) -> None:
        if not public_key and not jwks_url:
            raise ValueError("a JWT public key or JWKS URL is required")
        self._workload = workload
        self._workload_key: Any = (
            serialization.load_pem_public_key(workload.public_key.encode()) if workload else None
        )
        # Parsed once: PyJWT would parse a PEM string again on every call.
        self._public_key: Any = (
            serialization.load_pem_public_key(public_key.encode()) if public_key else None
        )
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        # A client sends the same token on every call: its signature is checked once, and
        # its expiry on every use. Bounded, oldest evicted first.
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def verify(self, authorization: str | None) -> Identity:
        if not authorization:
            raise Unauthenticated("missing authorization metadata", reason="MISSING_TOKEN")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization must be 'Bearer <token>'", reason="BAD_TOKEN")
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if self._clock() <= expires + self._leeway:
                return identity
            del self._verified[token]
        if len(token) > MAX_TOKEN_CHARS:
            raise _bad_token(f"longer than {MAX_TOKEN_CHARS} characters")
        identity, expires = self._verify_signature(token)
        if self._clock() > expires + self._leeway:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED")
        self._verified[token] = (identity, expires)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return identity

    def _key_for(self, token: str) -> Any:
        if self._jwks is None:
            return self._public_key
        try:
            return self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as error:
            raise Unavailable(
                "the token's signing keys cannot be fetched now", reason="JWKS_UNAVAILABLE"
            ) from error

    def _is_workload(self, token: str) -> bool:
        if self._workload is None:
            return False
        unverified = jwt.decode(token, options={"verify_signature": False})
        return isinstance(unverified, dict) and unverified.get("iss") == self._workload.issuer

    def _verify_signature(self, token: str) -> tuple[Identity, float]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            workload = self._is_workload(token)
            key = self._workload_key if workload else self._key_for(token)
            allowed = algorithms_for(key)
            if algorithm not in allowed:
                raise _bad_token(f"algorithm {str(algorithm)[:20]!r} does not fit the key")
            claims = jwt.decode(
                token,
                key,
                algorithms=allowed,
                issuer=self._workload.issuer if workload and self._workload else self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from error
        except (Unauthenticated, Unavailable):
            raise
        except jwt.PyJWTError as error:
            raise _bad_token(str(error)[:200]) from error
        except Exception as error:  # any token at all is refused, never a bug
            raise _bad_token(type(error).__name__) from error
        lifetime = float(claims["exp"]) - float(claims["iat"])
        longest = (
            self._workload.max_lifetime_seconds
            if workload and self._workload
            else self._max_lifetime
        )
        if lifetime > longest:
            raise Unauthenticated(
                f"token lives {lifetime:.0f}s, longer than the {longest:.0f}s allowed",
                reason="TOKEN_LIFETIME_TOO_LONG",
            )
        roles = claims.get("roles", [])
        if not (
            isinstance(roles, list)
            and len(roles) <= MAX_ROLES
            and all(_printable(r, MAX_ROLE_CHARS) for r in roles)
        ):
            raise _bad_token(f"claim 'roles' must be at most {MAX_ROLES} short strings")
        subject = claims["sub"]
        if not _printable(subject, MAX_SUBJECT_CHARS):
            raise _bad_token(f"claim 'sub' must be 1 to {MAX_SUBJECT_CHARS} printable characters")
        if workload:
            return _workload_identity(claims, token), float(claims["exp"])
        identity = Identity(user_id=subject, roles=frozenset(roles), token=token)
        return identity, float(claims["exp"])


def _workload_identity(claims: dict[str, Any], token: str) -> Identity:
    """A workload token names its actor and scopes; it never carries roles."""
    scope, actor = claims.get("scope"), claims.get("act")
    scopes = scope.split() if isinstance(scope, str) else []
    actor_id = actor.get("sub") if isinstance(actor, dict) else None
    if not scopes or len(scopes) > MAX_SCOPES or not all(_printable(s, 64) for s in scopes):
        raise _bad_token("a workload token needs a 'scope'")
    if not _printable(actor_id, MAX_SUBJECT_CHARS):
        raise _bad_token("a workload token needs an actor ('act.sub')")
    if claims.get("roles"):
        raise _bad_token("a workload token carries no roles")
    assert isinstance(actor_id, str)
    return Identity(
        user_id=claims["sub"],
        roles=frozenset(),
        token=token,
        scopes=frozenset(scopes),
        actor=actor_id,
    )


class WorkloadSigner:
    """Issues this service's workload tokens: on behalf of one user, with narrow scopes,
    living `ttl_seconds`; each is reused until a minute before it expires."""

    def __init__(
        self,
        private_key: str,
        *,
        issuer: str,
        actor: str,
        audience: str = "pixsim",
        ttl_seconds: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = serialization.load_pem_private_key(private_key.encode(), password=None)
        self._issuer, self._actor, self._audience = issuer, actor, audience
        self._ttl = ttl_seconds
        self._clock = clock
        self._issued: dict[tuple[str, str], tuple[str, float]] = {}

    def token_for(self, user_id: str, *scopes: str) -> str:
        scope = " ".join(sorted(scopes))
        now = self._clock()
        cached = self._issued.get((user_id, scope))
        if cached is not None and cached[1] - now > 60:
            return cached[0]
        issued = int(now)
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "act": {"sub": self._actor},
            "scope": scope,
            "iat": issued,
            "exp": issued + self._ttl,
        }
        algorithm = "EdDSA" if isinstance(self._key, ed25519.Ed25519PrivateKey) else "ES256"
        token = jwt.encode(claims, self._key, algorithm=algorithm)  # type: ignore[arg-type]
        if len(self._issued) > 4096:
            self._issued.clear()
        self._issued[(user_id, scope)] = (token, issued + self._ttl)
        return token


def issue_token(
    private_key: str,
    *,
    user_id: str,
    roles: Iterable[str] = (),
    issuer: str = "pixsim-local",
    audience: str = "pixsim",
    ttl_seconds: int = 3600,
    algorithm: str = "EdDSA",
    now: float | None = None,
) -> str:
    """Sign a token; used by `pixsim token` and by tests. Services never hold a private key."""
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": user_id,
        "roles": sorted(roles),
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    return jwt.encode(claims, private_key, algorithm=algorithm)


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 key pair as (private PEM, public PEM), for the local stack and tests."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem
