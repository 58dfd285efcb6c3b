"""The `tokens` executable: start-up settings, then the command line.

Every command is a whole Python process, so start-up is part of each command's
latency (`python -m bench` measures it against `python -c pass`). Two things
here shorten it (docs/decisions.md, "A command's start-up"):

- Bytecode caches. Machines that set PYTHONDONTWRITEBYTECODE compile every
  imported module from source in every process. The first command writes the
  caches (`__pycache__/`, ignored by git), the next ones load them.
- structlog without rich tracebacks. `structlog.dev` imports rich (and
  pygments) at import time just to offer pretty tracebacks; our log lines
  render exceptions as plain text anyway, and rich stays importable for the
  tables that people read.
"""

from __future__ import annotations

import sys


def _import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def run() -> None:
    sys.dont_write_bytecode = False
    _import_structlog_without_rich()
    from cli.main import run as run_cli

    run_cli()
