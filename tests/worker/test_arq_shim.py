"""worker/arq_shim.py: the one place that relies on arq's (and redis-py's) internals
fails these tests, not production, when a new arq changes them."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker

from runtime.config import Settings
from worker import arq_shim
from worker.settings import worker_kwargs

ROOT = Path(__file__).resolve().parents[2]


def test_arq_methods_the_worker_overrides_keep_their_signatures() -> None:
    for name, expected in arq_shim.OVERRIDDEN.items():
        assert str(inspect.signature(getattr(Worker, name), eval_str=True)) == expected, name
        # and the override takes what arq passes it
        assert (
            str(inspect.signature(getattr(arq_shim.TokensWorker, name), eval_str=True)) == expected
        ), name


def test_the_worker_attributes_the_overrides_use_exist() -> None:
    worker = arq_shim.TokensWorker(**worker_kwargs(Settings(), "redis://127.0.0.1:1/0"))
    for name in arq_shim.WORKER_ATTRIBUTES:
        assert hasattr(worker, name), name
    assert worker.job_counter == 0 and worker.max_jobs == Settings().worker_concurrency
    assert worker.tasks == {}


def test_pooled_connections_lists_a_pool_idle_and_in_use() -> None:
    redis = ArqRedis.from_url("redis://127.0.0.1:1/0")
    pool: Any = redis.connection_pool
    for name in arq_shim.POOL_ATTRIBUTES:
        assert hasattr(pool, name), name
    idle, busy = pool.make_connection(), pool.make_connection()
    pool._available_connections.append(idle)
    pool._in_use_connections.add(busy)
    assert arq_shim.pooled_connections(redis) == [idle, busy]


def test_the_pin_is_the_locked_arq() -> None:
    lock = (ROOT / "uv.lock").read_text()
    found = re.search(r'\[\[package\]\]\nname = "arq"\nversion = "([^"]+)"', lock)
    assert found is not None
    assert found.group(1) == arq_shim.ARQ_VERSION


def test_another_arq_is_refused_at_import_with_the_reason() -> None:
    code = "import arq.version; arq.version.VERSION = '0.99.0'; import worker.arq_shim"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: worker/arq_shim.py is written for arq 0.28.0")
    assert "arq 0.99.0 is installed" in last
