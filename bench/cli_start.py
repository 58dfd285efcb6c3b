"""Start-up cost of a command: `tokens billing --json` and `tokens charge --json`.

A command is a whole Python process, so its wall time is interpreter start,
imports, connecting and the work. Measured against `python -c pass` in the
same run, on a running embedded Postgres (the servers outlive each command,
as in use), with the installed `tokens` executable. Runs are interleaved so
that a busy moment of the machine hits all three alike.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKENS = Path(sys.executable).with_name("tokens")
TEAM = "bench-cli"


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    return env | {"TOKENS_DATA_DIR": str(data_dir)}


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return elapsed


def run(*, quick: bool) -> dict[str, Any]:
    runs = 15 if quick else 40
    root = Path(tempfile.mkdtemp(prefix="tokens-bench-cli-", dir="/tmp"))
    root.chmod(0o755)
    env = _env(root / "data")
    tokens = str(TOKENS)
    try:
        setup = [tokens, "team", "set", TEAM, "--plan", "sales_engagement", "--seats", "1000"]
        setup += ["--interval", "month", "--anchor", "2026-01-01T00:00:00Z"]
        _timed(setup, env)  # starts the servers, migrates, writes bytecode caches
        commands = {
            "billing": [tokens, "billing", TEAM, "--json"],
            "charge": [tokens, "charge", TEAM, "debounce", "--json"],
            "python_floor": [sys.executable, "-c", "pass"],
        }
        for argv in commands.values():
            _timed(argv, env)  # warm the page cache
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(_timed(argv, env))
    finally:
        subprocess.run([tokens, "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
    p50 = {name: round(statistics.median(ms), 1) for name, ms in times.items()}
    return {
        "runs": runs,
        "billing_p50_ms": p50["billing"],
        "charge_p50_ms": p50["charge"],
        "python_floor_ms": p50["python_floor"],
        "billing_max_ms": round(max(times["billing"]), 1),
        "charge_max_ms": round(max(times["charge"]), 1),
    }


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
