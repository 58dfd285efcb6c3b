"""Where the servers are: the configured URLs, or the embedded servers of the data dir."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from runtime.config import Settings


def database_url(settings: Settings) -> str:
    """The configured Postgres, or the embedded one of the data dir (started if needed)."""
    if settings.database_url:
        return settings.database_url
    from runtime.embedded import ensure_postgres

    return ensure_postgres(settings.data_dir)


def redis_url(settings: Settings) -> str:
    """The configured Redis, or the embedded Valkey of the data dir (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    from runtime.embedded import ensure_redis

    return ensure_redis(settings.data_dir)


def redacted(url: str) -> str:
    """A connection URL fit for a log line or an error: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
