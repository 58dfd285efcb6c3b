"""Who is calling: the application's HS256 JWT (SPEC section 8).

Claims: `sub` (the user, recorded as the actor of what they change), `team`,
`role` (`member`, `admin` or `service`) and `exp` (required). No token, a bad
signature, another algorithm than HS256 (`none` included) or an expired
token: 401. A `member` or `admin` acts only on its own team; `service` on any;
a route that wants another role: 403.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt

from api.errors import ApiError

ALGORITHMS = ["HS256"]  # never taken from the token's header
MEMBER, ADMIN, SERVICE = "member", "admin", "service"
ROLES = (MEMBER, ADMIN, SERVICE)
TEAM_ROLES = (MEMBER, ADMIN)  # bound to the token's own team

# A short shared secret is the operator's choice (and is logged at start-up);
# PyJWT's per-request warning about it would only repeat that.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


@dataclass(frozen=True)
class Caller:
    sub: str
    role: str
    team: str | None
    exp: int


def unauthenticated(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": 'Bearer realm="tokens"'})


def decode(token: str, secret: str) -> Caller:
    """The caller named by a token, or a 401. A token verified before is not verified
    again (the signature and claims cannot have changed), but its expiry is."""
    caller = _verified(token, secret)
    if caller.exp <= time.time():
        raise unauthenticated("token_expired", "the token has expired")
    return caller


@lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> Caller:
    """Signature and claims; only a valid token is cached (an exception never is)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            options={"require": ["exp", "sub", "role"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise unauthenticated("token_expired", "the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise unauthenticated("invalid_token", f"invalid token: {exc}") from None
    sub, role, team = claims["sub"], claims["role"], claims.get("team")
    if not isinstance(sub, str) or not sub.strip():
        raise unauthenticated("invalid_token", "invalid token: 'sub' must name the user")
    if not isinstance(role, str):
        raise unauthenticated("invalid_token", "invalid token: 'role' must be a string")
    if team is not None and not isinstance(team, str):
        raise unauthenticated("invalid_token", "invalid token: 'team' must be a string")
    return Caller(sub=sub, role=role, team=team, exp=int(claims["exp"]))


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header, or a 401."""
    if not header:
        raise unauthenticated("missing_token", "an Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("missing_token", "the Authorization header must be 'Bearer <JWT>'")
    return token.strip()


def authorize(caller: Caller, team: str, roles: tuple[str, ...]) -> None:
    """403 unless the caller has one of `roles` and (but for `service`) is of `team`."""
    if caller.role not in roles:
        raise ApiError(
            403,
            "forbidden_role",
            f"role {caller.role!r} may not do this (allowed: {', '.join(roles)})",
        )
    if caller.role != SERVICE and caller.team != team:
        raise ApiError(
            403, "forbidden_team", f"this token acts for team {caller.team!r}, not {team!r}"
        )
