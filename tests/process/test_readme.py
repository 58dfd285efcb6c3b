"""The README's HTTP walkthrough, run as a new user would: after `tokens demo`, the
block of shell commands that README.md marks, read from README.md itself so the
two cannot drift apart.

Only what a test machine needs changes: `uv run X` runs X from this project's
environment (as `uv run` would, without touching the lock), and port 8000 is a
free port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.api_live import free_port
from tests.process import ROOT, Tokens, clean_env

pytestmark = pytest.mark.process

MARKER = "<!-- readme-http"


def readme_block(text: str) -> str:
    """The fenced block that follows the marker."""
    after = text.split(MARKER, 1)[1]
    found = re.search(r"```sh\n(.*?)\n```", after, re.S)
    assert found is not None, "README.md: no ```sh block after the readme-http marker"
    return found.group(1)


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in curl's output (which ends an answer without a newline)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


def test_the_readme_http_section_runs_as_written_after_the_demo() -> None:
    block = readme_block((ROOT / "README.md").read_text())
    assert block.count("8000") >= 5  # the walkthrough really talks to the server
    port = free_port()
    script = block.replace("localhost:8000", f"localhost:{port}").replace(
        "--port 8000", f"--port {port}"
    )
    work = Path(tempfile.mkdtemp(prefix="tokens-readme-", dir="/tmp"))
    work.chmod(0o755)  # the embedded Postgres runs as another user
    env = clean_env(
        TOKENS_DATA_DIR=str(work / "data"),
        TOKENS_LOG_LEVEL="WARNING",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    tokens = Tokens(env, "readme")
    demo = tokens.ok("demo", "--json", timeout=240).json()
    prelude = 'set -euo pipefail\nuv() { [ "$1" = run ] && shift; "$@"; }\n'
    proc = subprocess.Popen(
        ["bash", "-c", prelude + script],
        cwd=work,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the block's background server and worker with it
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        tokens("stop")
    logs = "\n".join(
        f"--- {name}\n{(work / name).read_text()[-2000:]}"
        for name in ("serve.log", "worker.log")
        if (work / name).exists()
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}\n{out[-2000:]}\n{logs}"
    # The demo's teams were listed, by the CLI and by GET /v1/teams.
    for team in demo["teams"].values():
        assert out.count(team) >= 2, team
    objects = json_objects(out)
    assert any(o.get("status") == "captured" for o in objects), out
    billing = next(o for o in objects if o.get("team") == "acme" and "free_spent" in o)
    assert billing["free_spent"] == 10 and billing["additional_limit"] == 5000
    assert "the billing page: http://localhost:" in out
