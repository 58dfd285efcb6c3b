"""The installed `tokens` executable, run as users run it: a fresh process per command.

In-process CLI tests share one interpreter with every other test, so they
cannot see what only a fresh process meets (imports, mapper set-up, start-up
cost, exit codes). These helpers start `.venv/bin/tokens` itself; the tests
next to them are all marked `process` (`pytest -m process` runs this layer alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOKENS_BIN = Path(sys.executable).with_name("tokens")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any TOKENS_ / STRIPE_ setting of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    return env | extra


@dataclass
class Proc:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Tokens:
    """`tokens ARGS...` in a new process with a fixed environment."""

    def __init__(self, env: Mapping[str, str], name: str = "tokens") -> None:
        self.env = dict(env)
        self.name = name

    def with_env(self, **extra: str) -> Tokens:
        return Tokens(self.env | extra, self.name)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        return subprocess.Popen(
            [str(TOKENS_BIN), *args], env=self.env, cwd=ROOT, text=True, **(options | kwargs)
        )

    def __call__(self, *args: str, timeout: float = 90) -> Proc:
        done = subprocess.run(
            [str(TOKENS_BIN), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Proc(args, done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, timeout: float = 90) -> Proc:
        proc = self(*args, timeout=timeout)
        assert proc.code == 0, f"tokens {' '.join(args)} -> {proc.code}\n{proc.err}"
        assert "Traceback" not in proc.err, proc.err
        return proc

    def refused(self, *args: str, code: int = 1, says: str = "") -> Proc:
        """A refusal as README "Command line" gives it: non-zero exit, one line, no traceback."""
        proc = self(*args)
        assert proc.code == code, (
            f"tokens {' '.join(args)} -> {proc.code}, wanted {code}\n{proc.err}"
        )
        assert_one_line_error(proc.err)
        assert says.lower() in proc.err.lower(), proc.err
        return proc


def assert_one_line_error(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr is not one line:\n{err}"
    assert lines[0].startswith("tokens: error: "), lines[0]
    assert "Traceback" not in err


def argv(*words: str | int, **opts: str | int | bool | None) -> list[str]:
    """argv for `tokens`: the words, then `--name value` for each option (`_` in a name
    becomes `-`; True gives the bare flag; None and False leave the option out)."""
    out = [str(w) for w in words]
    for name, value in opts.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


TEAM_DEFAULTS = {"interval": "month", "anchor": "2026-01-01T00:00:00Z"}


def team_set(
    team: str, *, plan: str = "email_outreach", seats: int | str = 1, **opts: str | bool | None
) -> list[str]:
    """argv for `tokens team set` with test defaults (anchor and --at 2026-01-01)."""
    fields: dict[str, str | bool | None] = {**TEAM_DEFAULTS, "at": TEAM_DEFAULTS["anchor"]}
    return argv("team", "set", team, plan=plan, seats=seats, **(fields | opts))


def team_limit(
    team: str, tokens: int | str, *, actor: str = "ann", role: str = "admin", **opts: str | None
) -> list[str]:
    """argv for `tokens team limit` (by an admin unless told otherwise)."""
    return argv("team", "limit", team, tokens, actor=actor, role=role, **opts)
