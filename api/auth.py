"""Who is calling: the application's HS256 JWT (README "The HTTP API and the billing page").

Claims: `sub` (the user, recorded as the actor of what they change), `team`,
`role` (`member`, `admin` or `service`) and `exp` (required, a NumericDate:
a JSON number, as RFC 7519 says; PyJWT alone would take "1999999999" or
`true`). No token, a bad signature, another algorithm than HS256 (`none`
included), an expired token or one living longer than the configured maximum
(TOKENS_JWT_MAX_LIFETIME_SECONDS, from `iat` or, without one, from now): 401.
A `member` or `admin` acts only on its own team; `service` on any; a route that
wants another role: 403.
"""

from __future__ import annotations

import math
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


DEFAULT_MAX_LIFETIME_S = 24 * 3600


def decode(token: str, secret: str, max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S) -> Caller:
    """The caller named by a token, or a 401. A token verified before is not verified
    again (the signature and claims cannot have changed, and a lifetime that fitted
    under the cap only shrinks), but its expiry is."""
    caller = _verified(token, secret, max_lifetime_s)
    if caller.exp <= time.time():
        raise unauthenticated("token_expired", "the token has expired")
    return caller


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519, 2): a finite JSON number; a string or a boolean
    is refused rather than converted."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise unauthenticated(
            "invalid_token", f"invalid token: {name!r} must be a NumericDate (a number of seconds)"
        )
    return float(value)


@lru_cache(maxsize=4096)
def _verified(token: str, secret: str, max_lifetime_s: int) -> Caller:
    """Signature and claims; only a valid token is cached (an exception never is)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            # exp and iat are checked below, as numbers, before PyJWT's int() sees them.
            options={
                "require": ["exp", "sub", "role"],
                "verify_aud": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidTokenError as exc:
        raise unauthenticated("invalid_token", f"invalid token: {exc}") from None
    exp = _numeric_date(claims, "exp")
    issued = _numeric_date(claims, "iat")
    assert exp is not None  # required above
    now = time.time()
    if exp <= now:
        raise unauthenticated("token_expired", "the token has expired")
    if issued is not None and issued > now:
        raise unauthenticated("invalid_token", "invalid token: it is not valid yet (iat)")
    if exp - (issued if issued is not None else now) > max_lifetime_s:
        raise unauthenticated(
            "token_lifetime",
            f"the token lives longer than the maximum of {max_lifetime_s} s allowed "
            "(exp - iat, or exp - now without iat): issue a shorter-lived one",
        )
    if _numeric_date(claims, "nbf") is not None and claims["nbf"] > now:
        raise unauthenticated("invalid_token", "invalid token: it is not valid yet (nbf)")
    sub, role, team = claims["sub"], claims["role"], claims.get("team")
    if not isinstance(sub, str) or not sub.strip():
        raise unauthenticated("invalid_token", "invalid token: 'sub' must name the user")
    if not isinstance(role, str):
        raise unauthenticated("invalid_token", "invalid token: 'role' must be a string")
    if team is not None and not isinstance(team, str):
        raise unauthenticated("invalid_token", "invalid token: 'team' must be a string")
    return Caller(sub=sub, role=role, team=team, exp=int(exp))


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header, or a 401."""
    if not header:
        raise unauthenticated("missing_token", "an Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("missing_token", "the Authorization header must be 'Bearer <JWT>'")
    return token.strip()


def require_role(caller: Caller, roles: tuple[str, ...]) -> None:
    """403 unless the caller has one of `roles` (whatever the team)."""
    if caller.role not in roles:
        raise ApiError(
            403,
            "forbidden_role",
            f"role {caller.role!r} may not do this (allowed: {', '.join(roles)})",
        )


def may_see(caller: Caller, team: str) -> bool:
    """Whether the caller acts for `team` (`service` acts for every team)."""
    return caller.role == SERVICE or caller.team == team


def authorize(caller: Caller, team: str, roles: tuple[str, ...]) -> None:
    """403 unless the caller has one of `roles` and (but for `service`) is of `team`."""
    require_role(caller, roles)
    if not may_see(caller, team):
        raise ApiError(403, "forbidden_team", f"this token acts for team {caller.team!r} only")
