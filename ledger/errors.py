"""Every refusal the ledger can give, each with the ids it concerns.

Database errors are translated once, here, by SQLSTATE (raised by the
functions in sql/functions.sql) or by constraint name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from ledger.results import HoldResult


class TokensError(Exception):
    """Base of every refusal: the message is one line, fit for a terminal."""

    code = "tokens_error"


class BadInput(TokensError):
    code = "bad_input"


class CatalogError(BadInput):
    code = "bad_catalog"


class UnknownAction(BadInput):
    code = "unknown_action"

    def __init__(self, action: str, known: list[str]) -> None:
        super().__init__(f"unknown action {action!r} (known: {', '.join(known)})")
        self.action = action


class UnknownPlan(BadInput):
    code = "unknown_plan"

    def __init__(self, plan: str, known: list[str]) -> None:
        super().__init__(f"unknown plan {plan!r} (known: {', '.join(known)})")
        self.plan = plan


class UnknownTeam(TokensError):
    code = "unknown_team"

    def __init__(self, team: str) -> None:
        super().__init__(f"unknown team {team!r}")
        self.team = team


class UnknownCharge(TokensError):
    code = "unknown_charge"

    def __init__(self, charge_id: int) -> None:
        super().__init__(f"unknown charge {charge_id}")
        self.charge_id = charge_id


class NotAdmin(TokensError):
    code = "not_admin"

    def __init__(self, actor: str, role: str) -> None:
        super().__init__(
            f"only a team admin may change the additional-token limit ({actor!r} is {role})"
        )


class TrialNoAdditional(TokensError):
    code = "trial_no_additional"

    def __init__(self, team: str) -> None:
        super().__init__(f"team {team!r} is on the trial plan: no additional tokens allowed")


class IdempotencyMismatch(TokensError):
    """The same key was used before with another action or quantity (as in Stripe)."""

    code = "idempotency_mismatch"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ChargeAlreadySettled(TokensError):
    code = "charge_settled"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class AnchorConflict(TokensError):
    code = "anchor_conflict"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NotEnoughTokens(TokensError):
    """A charge that does not fit in free + available additional tokens, refused whole."""

    code = "not_enough_tokens"

    def __init__(self, result: HoldResult) -> None:
        super().__init__(
            f"not enough tokens for team {result.team!r}: {result.action} x{result.quantity} "
            f"needs {result.tokens}, available {result.free_available} free + "
            f"{result.additional_available} additional"
        )
        self.result = result


class NotMigrated(TokensError):
    code = "not_migrated"


class Unreachable(TokensError):
    """A server (Postgres, Redis) could not be reached or refused the connection.

    Not a refusal of the request: the same command, with the same idempotency
    key, can be run again once the server is back (the CLI exits 3 for it).
    """

    code = "unreachable"

    def __init__(self, server: str, where: str, err: BaseException) -> None:
        reason = " ".join(str(err).split()) or type(err).__name__
        super().__init__(f"cannot reach {server} at {where}: {reason}")
        self.server = server


_BY_SQLSTATE: dict[str, type[TokensError]] = {
    "TK001": UnknownTeam,
    "TK002": IdempotencyMismatch,
    "TK003": UnknownCharge,
    "TK004": ChargeAlreadySettled,
    "TK005": AnchorConflict,
}


def translate(exc: asyncpg.PostgresError) -> TokensError | None:
    """The project's error for a database error raised on purpose, else None."""
    sqlstate = getattr(exc, "sqlstate", None)
    kind = _BY_SQLSTATE.get(sqlstate or "")
    if kind is None:
        return None
    detail = getattr(exc, "detail", None) or ""
    if kind is UnknownTeam:
        return UnknownTeam(detail)
    if kind is UnknownCharge:
        return UnknownCharge(int(detail))
    return kind(str(getattr(exc, "message", exc)))
