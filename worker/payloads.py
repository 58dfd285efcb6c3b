"""Job payloads, validated before anything is held (README "Queueing jobs")."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ledger.errors import BadInput


class Lead(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    company_domain: str | None = Field(default=None, max_length=255)
    linkedin_url: str | None = Field(default=None, max_length=500)

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        # The id goes to Postgres (where a NUL cannot be stored) and into the charge's
        # key, which must be printable; the other fields only go to the provider.
        if value is not None and not value.isprintable():
            raise ValueError("must not hold control characters (NUL, newline, tab, ...)")
        return value

    @model_validator(mode="after")
    def _something_to_search(self) -> Lead:
        if not any((self.email, self.linkedin_url, self.company_domain and self.last_name)):
            raise ValueError(
                "a lead needs an email, a linkedin_url, or a last_name with a company_domain"
            )
        return self


MAX_LEADS = 100_000


class LeadList(BaseModel):
    """`enrich` and `debounce`: one job per lead."""

    model_config = ConfigDict(extra="forbid")

    leads: list[Lead] = Field(min_length=1, max_length=MAX_LEADS)


class SequencePayload(BaseModel):
    """`ai_sequence`: a prompt, plus whatever context the app adds."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    prompt: str = Field(min_length=1, max_length=20_000)


class IcebreakerPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    lead: Lead


class DebounceLead(Lead):
    """Email verification needs an email."""

    @model_validator(mode="after")
    def _needs_email(self) -> DebounceLead:
        if not self.email:
            raise ValueError("debounce needs the lead's email")
        return self


def parse(model: type[BaseModel], data: Any, what: str) -> Any:
    """Validate `data` or refuse with one line naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise BadInput(f"malformed {what} payload: {where}: {first['msg']}") from None


class DebounceLeadList(LeadList):
    """`debounce`: every lead has an email (validated in one pass with the list)."""

    leads: list[DebounceLead] = Field(min_length=1, max_length=MAX_LEADS)  # type: ignore[assignment]
