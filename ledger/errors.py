"""Every refusal the ledger can give, each with the ids it concerns.

Database errors are translated once, here (`translate`, `from_code`): an
error of the money functions (sql/errors.sql), raised (SQLSTATE TK0xx, DETAIL) or given as one
item's answer by tokens_apply (err_code, err_detail), becomes the same typed
error, carrying the ids it concerns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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

    def __init__(self, actor: str, role: str, what: str = "the additional-token limit") -> None:
        super().__init__(f"only a team admin may change {what} ({actor!r} is {role})")


class TrialNoAdditional(TokensError):
    code = "trial_no_additional"

    def __init__(self, team: str) -> None:
        super().__init__(f"team {team!r} is on the trial plan: no additional tokens allowed")


class IdempotencyMismatch(TokensError):
    """The same key was used before with another action or quantity (as in Stripe)."""

    code = "idempotency_mismatch"

    def __init__(self, team: str, key: str, charge_id: int, *, message: str) -> None:
        super().__init__(message)
        self.team = team
        self.key = key
        self.charge_id = charge_id


class JobIdReused(TokensError):
    """An enqueue's job id was used before by its team for another request (another
    action, quantity or payload): as with an idempotency key, nothing is queued."""

    code = "job_id_reused"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job id {job_id!r} was used before for another request (another action, quantity "
            "or payload): nothing was queued; send it again with a new job_id"
        )
        self.job_id = job_id


class ChargeAlreadySettled(TokensError):
    code = "charge_settled"

    def __init__(self, charge_id: int, state: str, *, message: str) -> None:
        super().__init__(message)
        self.charge_id = charge_id
        self.state = state


class AnchorConflict(TokensError):
    code = "anchor_conflict"

    def __init__(self, team: str, *, message: str) -> None:
        super().__init__(message)
        self.team = team


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


class MemberCapReached(TokensError):
    """A hold that would take its member over their monthly cap, refused whole."""

    code = "member_cap"

    def __init__(self, result: HoldResult) -> None:
        super().__init__(
            f"member {result.member!r} of team {result.team!r} would go over their monthly "
            f"cap: {result.action} x{result.quantity} needs {result.tokens} tokens"
        )
        self.result = result


def refusal_error(result: HoldResult) -> TokensError:
    """The error of a refused hold, by why it was refused."""
    if result.refusal == "member_cap":
        return MemberCapReached(result)
    return NotEnoughTokens(result)


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


NOT_MIGRATED = "the database is not migrated: run `tokens migrate`"


def from_code(code: str, message: str, detail: Mapping[str, Any]) -> TokensError:
    """The typed error for an error of the money functions: its TK0xx code, its message
    (written once, in tokens_error_message) and the ids it concerns (its DETAIL)."""
    if code == "TK001":
        return UnknownTeam(detail["team"])
    if code == "TK002":
        return IdempotencyMismatch(
            detail["team"], detail["key"], int(detail["charge"]), message=message
        )
    if code == "TK003":
        return UnknownCharge(int(detail["charge"]))
    if code == "TK004":
        return ChargeAlreadySettled(int(detail["charge"]), detail["state"], message=message)
    if code == "TK005":
        return AnchorConflict(detail["team"], message=message)
    return BadInput(message)  # TK006: a settlement to a state that is not one


def detail_of(text: str | None) -> dict[str, Any]:
    """The ids of an error: its DETAIL (or tokens_apply's err_detail), a JSON object."""
    return json.loads(text) if text else {}


def translate(exc: asyncpg.PostgresError) -> TokensError | None:
    """The project's error for a database error: one raised on purpose (TK0xx), or a
    schema that is not there yet; else None."""
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return NotMigrated(NOT_MIGRATED)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if not sqlstate.startswith("TK"):
        return None
    message = str(getattr(exc, "message", None) or exc)
    return from_code(sqlstate, message, detail_of(getattr(exc, "detail", None)))
