"""Operating it: compose file, worker settings, `tokens check`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from arq.worker import Worker

from cli.main import app
from runtime.config import Settings
from tests.cli_helpers import Cli
from worker.settings import worker_kwargs

ROOT = Path(__file__).resolve().parents[2]


def _subcommands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    return names | {"team"}


def test_compose_runs_real_commands_with_real_settings() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    fields = {f"TOKENS_{name.upper()}" for name in Settings.model_fields} | {
        "STRIPE_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
    }
    commands = _subcommands()
    seen = 0
    for name, service in compose["services"].items():
        parts = service.get("command") or []
        text = " ".join(parts) if isinstance(parts, list) else str(parts)
        health = " ".join(map(str, service.get("healthcheck", {}).get("test", [])))
        for used in re.findall(r"\btokens (\w+)", f"{text} {health}"):
            assert used in commands, f"{name}: `tokens {used}` is not a command"
            seen += 1
        for var in service.get("environment", {}) or {}:
            if var.startswith(("TOKENS_", "STRIPE_")):
                assert var in fields, f"{name}: {var} is not a setting"
    assert seen >= 4
    assert {"postgres", "redis", "migrate", "worker", "api", "reconciler"} <= set(
        compose["services"]
    )


def test_worker_settings_are_real_worker_parameters() -> None:
    kwargs = worker_kwargs(Settings(), "redis://127.0.0.1:1/0")
    worker = Worker(**kwargs)  # an unknown keyword is a TypeError here
    assert {f.name for f in worker.functions.values()} >= {
        "ai_sequence",
        "ai_icebreaker",
        "enrich",
        "debounce",
        "reconcile_team",
        "reconcile_all",
        "expire_holds",
    }


def test_check_reports_each_dependency(cli: Cli, redis_url: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("TOKENS_REDIS_URL", redis_url)
    out = cli.ok("check", "--json").json()
    assert out["postgres"] == "ok" and out["redis"] == "ok"
    assert out["migrations"].startswith("ok")
    monkeypatch.setenv("TOKENS_REDIS_URL", "redis://127.0.0.1:1/0")
    bad = cli("check", "--json")
    assert bad.code == 1 and "not healthy: redis" in bad.err
    assert bad.json()["redis"].startswith("unreachable")
