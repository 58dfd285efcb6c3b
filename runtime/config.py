"""Process configuration, read once from the environment (README "Configuration")."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class VendorSettings(BaseModel):
    """One enrichment or verification vendor: TOKENS_<VENDOR>_API_KEY (or
    TOKENS_<VENDOR>_API_KEY_FILE) and TOKENS_<VENDOR>_BASE_URL."""

    api_key: SecretStr
    base_url: str | None = None


_VENDOR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# The vendors this version speaks, per action, by the names TOKENS_ENRICH_PROVIDERS and
# TOKENS_VERIFY_PROVIDERS take. Plain names: settings are checked at start-up by every
# process, which must not load the vendors' code to do it; a test holds this list to
# worker/providers/vendors, where each vendor is built.
VENDOR_NAMES: dict[str, tuple[str, ...]] = {
    "enrich": ("hunter", "pdl"),
    "verify": ("debounce", "zerobounce"),
}


def vendor_names(value: str | None) -> list[str]:
    """`pdl, hunter` -> ["pdl", "hunter"] (waterfall order)."""
    return [n.strip().lower() for n in (value or "").split(",") if n.strip()]


def vendor_from_env(name: str, environ: dict[str, str] | os._Environ[str]) -> VendorSettings:
    """A vendor's key and address from the environment; the error names the
    variables, never a key."""
    upper = name.upper()
    key = environ.get(f"TOKENS_{upper}_API_KEY", "").strip()
    path = environ.get(f"TOKENS_{upper}_API_KEY_FILE", "").strip()
    if not key and path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"TOKENS_{upper}_API_KEY_FILE: cannot read {path} ({exc.strerror})"
            ) from None
    if not key:
        raise ValueError(
            f"vendor {name} needs TOKENS_{upper}_API_KEY or TOKENS_{upper}_API_KEY_FILE"
        )
    base = environ.get(f"TOKENS_{upper}_BASE_URL", "").strip() or None
    return VendorSettings(api_key=SecretStr(key), base_url=base)


class Settings(BaseSettings):
    """Everything a `tokens` process can be told from outside.

    Unset URLs mean "use the embedded server under `data_dir`".
    """

    model_config = SettingsConfigDict(env_prefix="TOKENS_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".tokens")
    catalog: Path | None = None
    # Every wait on Postgres has a deadline: borrowing a pooled connection, and each
    # statement (db/pool.py). Past either, the API answers 503 with Retry-After;
    # nothing hangs on a busy pool or a lock.
    db_acquire_timeout_seconds: float = Field(default=5.0, gt=0)
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0)

    stripe_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_API_KEY", "TOKENS_STRIPE_API_KEY")
    )
    stripe_api_base: str = "https://api.stripe.com"
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    # Requests a second per Stripe endpoint, from this process (Stripe allows 25).
    stripe_max_rps: float = Field(default=20.0, gt=0)
    # Requests a second overall; unset: 80 with a live key, 20 with a test key.
    stripe_max_total_rps: float | None = Field(default=None, gt=0)
    stripe_timeout_seconds: float = Field(default=30.0, gt=0)
    # An invoice whose customer has no default payment method is sent instead,
    # due this many days later.
    invoice_days_until_due: int = Field(default=7, ge=0, le=365)
    # Stripe's automatic collection pays a finalized invoice; the reconciler pays it
    # itself only when it is still open this long after finalizing.
    stripe_pay_after_seconds: int = Field(default=3600, ge=0)
    # The HTTP API (`tokens serve`) verifies the application's JWTs with app_secret
    # (below, TOKENS_APP_SECRET), and Stripe's webhooks with this signing secret.
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET", "TOKENS_STRIPE_WEBHOOK_SECRET"),
    )

    # A hold older than this is presumed abandoned by a dead worker and released.
    # It must exceed the worker's job timeout, or a slow search would lose its hold.
    hold_ttl_seconds: int = Field(default=900, gt=0)
    job_timeout_seconds: int = Field(default=120, gt=0)
    job_max_tries: int = Field(default=5, ge=1)
    # First retry delay after a provider failure; doubles per try, capped at 5 min.
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    # How long a job, the hold-expiry sweep or a reconcile waits out an unreachable
    # Postgres or Redis (restart, failover) before it is put back in the queue
    # for later. Never beyond the job's own timeout; such a retry never counts
    # against TOKENS_JOB_MAX_TRIES.
    outage_wait_seconds: float = Field(default=30.0, gt=0)
    reconcile_interval_seconds: int = Field(default=300, gt=0)
    worker_concurrency: int = Field(default=32, ge=1)
    metrics_port: int | None = None

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "INFO"

    # Providers: unset base URLs mean the offline sandbox providers.
    ai_base_url: str | None = None
    ai_api_key: str | None = None
    ai_model: str = "gpt-4o-mini"
    enrich_base_url: str | None = None
    enrich_api_key: str | None = None
    verify_base_url: str | None = None
    verify_api_key: str | None = None
    provider_timeout_seconds: float = Field(default=20.0, gt=0)
    # Real vendors (README, "Real vendors"): comma-separated names in waterfall order;
    # unset, the offline sandbox (or the enrich/verify base URL above).
    enrich_providers: str | None = None
    verify_providers: str | None = None
    # A vendor's answer ends the waterfall from this confidence on (0-100).
    enrich_min_confidence: int = Field(default=0, ge=0, le=100)
    verify_min_confidence: int = Field(default=0, ge=0, le=100)
    enrich_stop_at_first_found: bool = True
    verify_stop_at_first_found: bool = True
    # A vendor that refuses our key or says our credits are gone rests this long.
    vendor_pause_seconds: float = Field(default=300.0, gt=0)
    # Read from TOKENS_<VENDOR>_API_KEY[_FILE] / _BASE_URL for the vendors named above.
    vendors: dict[str, VendorSettings] = Field(default_factory=dict)
    # Make the offline sandbox providers as slow as a real one (demo, crash tests).
    sandbox_latency_ms: int = Field(default=0, ge=0)

    # Usage alerts (README "Usage alerts"): POSTed here by the worker when set, signed
    # with app_secret (TOKENS_APP_SECRET, the application's shared secret, which
    # also signs the JWTs of the HTTP API).
    alert_webhook_url: str | None = None
    app_secret: str | None = None
    # The longest an application's JWT may live (exp - iat, or exp - now without
    # iat): a leaked token, or a page cookie made from one, dies within this.
    jwt_max_lifetime_seconds: int = Field(default=24 * 3600, gt=0)
    # Request bodies of the HTTP API, in bytes, refused with a 413 before they are
    # read: a jobs or quote request (10,000 leads with every field filled, about 300
    # bytes each, are 3 MB), Stripe's events (a few KB, an invoice with its lines a
    # few hundred), anything else (a limit, a team's settings, the page's form).
    max_jobs_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_webhook_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    alert_interval_seconds: int = Field(default=10, gt=0)
    alert_timeout_seconds: float = Field(default=10.0, gt=0)
    # First retry delay of an alert the receiver did not take; doubles per try, capped.
    alert_retry_base_seconds: float = Field(default=5.0, ge=0)
    alert_retry_max_seconds: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _vendors_known_and_keyed(self) -> Settings:
        """Every vendor named is one this version speaks, for its action, with a key."""
        for action, names in (
            ("enrich", vendor_names(self.enrich_providers)),
            ("verify", vendor_names(self.verify_providers)),
        ):
            if not names:
                continue
            variable = f"TOKENS_{action.upper()}_PROVIDERS"
            known = sorted(VENDOR_NAMES[action])
            for name in names:
                if not _VENDOR_NAME.match(name) or name not in known:
                    raise ValueError(
                        f"{variable}: unknown vendor {name[:40]!r} (known: {', '.join(known)})"
                    )
            if len(set(names)) != len(names):
                raise ValueError(f"{variable}: a vendor is named twice")
            for name in names:
                if name not in self.vendors:
                    self.vendors[name] = vendor_from_env(name, os.environ)
        return self

    @model_validator(mode="after")
    def _holds_outlive_their_jobs(self) -> Settings:
        """A hold must outlive every try of its job, backoff included; otherwise
        the sweep could release tokens of a search that is still running.

        Outages do not enter this sum: a job waits one out only until its own
        timeout, and its requeues are not tries. While Postgres is away the
        sweep cannot run either; only an outage longer than the TTL can let it
        release a waiting job's hold (README, "Restarts and outages")."""
        backoff = sum(
            min(self.retry_backoff_seconds * 2**n, 300.0) for n in range(self.job_max_tries - 1)
        )
        longest = self.job_timeout_seconds * self.job_max_tries + backoff
        if self.hold_ttl_seconds <= longest:
            raise ValueError(
                f"TOKENS_HOLD_TTL_SECONDS ({self.hold_ttl_seconds}) must exceed the longest a job "
                f"can run with its retries ({longest:.0f} s = TOKENS_JOB_TIMEOUT_SECONDS x "
                "TOKENS_JOB_MAX_TRIES + backoff)"
            )
        return self

    @model_validator(mode="after")
    def _provider_calls_fit_in_a_job(self) -> Settings:
        """arq's job timeout is not a retry: it fails the job for good and leaves its
        hold to the sweep. A provider call that may outlast the job would make every
        slow answer such a failure, so one must fit in half a job's time (the rest
        is for the hold, the capture and a short outage)."""
        if self.provider_timeout_seconds * 2 > self.job_timeout_seconds:
            raise ValueError(
                f"TOKENS_PROVIDER_TIMEOUT_SECONDS ({self.provider_timeout_seconds:g}) must be at "
                f"most half of TOKENS_JOB_TIMEOUT_SECONDS ({self.job_timeout_seconds})"
            )
        return self


def load_settings() -> Settings:
    return Settings()
