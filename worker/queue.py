"""The queue's names, shared by whoever enqueues (CLI, API, demo) and the worker.

Light on purpose: the enqueue side imports this, not the job functions.
"""

from __future__ import annotations

QUEUE = "tokens:queue"

# One arq function per action, named as the action (the catalog's action names).
ACTION_JOBS = frozenset({"ai_sequence", "ai_icebreaker", "enrich", "debounce"})
RECONCILE_JOB = "reconcile_team"

# How many times each job went back to the queue because of an outage (soak, operators).
OUTAGE_KEY_PREFIX = "tokens:outage:"
