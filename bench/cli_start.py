"""Start-up cost of a command: `tokens billing --json` and `tokens charge --json`.

    python -m bench cli-start [--quick]

A command is a whole Python process, so its wall time is interpreter start,
imports, connecting and the work. Measured against `python -c pass` in the
same run, on a running embedded Postgres (the servers outlive each command,
as in use), with the installed `tokens` executable. Runs are interleaved so
that a busy moment of the machine hits all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.servers import spread

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
    # Per command: the median of its runs (p50), with the fastest and the slowest.
    return {"runs": runs, **{name: spread(ms, 1) for name, ms in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cli-start", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="15 runs of each (default 40)")
    args = parser.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
