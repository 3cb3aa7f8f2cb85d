"""Shared pytest configuration: fixtures live in plugin modules, registered here."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
# `tests.*` plugins are imported by name; make the repo root importable even when pytest is
# started through its console script (which does not put the current directory on sys.path).
if str(_TESTS.parent) not in sys.path:
    sys.path.insert(0, str(_TESTS.parent))

pytest_plugins = [
    "tests.pg_plugin",
    "tests.ingest_plugin",
    # The simulator fixtures; guarded so this file works before/without that plugin.
    *(["tests.sim_plugin"] if (_TESTS / "sim_plugin.py").exists() else []),
]
