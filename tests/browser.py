"""The browser of the billing page's tests: Debian's Chromium, installed when missing.

Playwright cannot download its own browsers on these machines, so the tests
drive /usr/bin/chromium. `uv run pytest` gets it the way `.ci/run` does
(apt-get, when running as root); otherwise it fails with what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_TIMEOUT_S = 900


class NoBrowser(RuntimeError):
    """Chromium is not there and could not be installed here."""


def ensure_chromium(path: Path = CHROMIUM, *, may_install: bool | None = None) -> Path:
    """`path` once it exists, installing Debian's chromium first when it is missing.

    `may_install`: whether to try apt-get (default: running as root with apt-get).
    """
    if path.exists():
        return path
    apt = shutil.which("apt-get")
    if may_install is None:
        may_install = os.geteuid() == 0 and apt is not None
    if not may_install or apt is None:
        raise NoBrowser(
            f"the billing page's browser tests need Chromium at {path}: install it with "
            "`sudo apt-get install -y chromium` (Debian/Ubuntu), or run the suite as root "
            "to have it installed"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for step in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(
                step, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NoBrowser(f"could not install chromium ({' '.join(step)}): {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise NoBrowser(
                f"could not install chromium: `{' '.join(step)}` exited {done.returncode}: "
                + " | ".join(tail)
            )
    if not path.exists():
        raise NoBrowser(f"apt-get installed chromium, but {path} is still missing")
    return path
