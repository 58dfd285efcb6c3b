"""Named SQL statements, parsed once from sql/queries.sql (procrastinate style)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_BLOCK = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _BLOCK.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def load(package: str) -> dict[str, str]:
    return parse(resources.files(package).joinpath("queries.sql").read_text())


def q(name: str, package: str = "ledger.sql") -> str:
    """The SQL of a named query; a KeyError here is a typo caught by the tests."""
    return load(package)[name]
