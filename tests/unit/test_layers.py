"""The layout holds: the core is pure, whatever imports it.

Each ``relay.core`` module is imported alone in a fresh interpreter, and
none may bring in an event loop, a socket or a database: the core is rules
over bytes and values, and whatever waits or writes belongs to the layers
above it (docs/architecture.md).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import relay.core

ROOT = Path(__file__).resolve().parents[2]
# What the core may never load, even through a library it uses.
IO_MODULES = ("trio", "anyio", "coredis", "asyncio", "socket", "ssl", "sqlite3")
CORE = sorted(f"relay.core.{m.name}" for m in pkgutil.iter_modules(relay.core.__path__))


def loaded_by(module: str) -> list[str]:
    """The I/O modules in sys.modules after importing ``module`` alone."""
    script = (f"import sys, json; import {module}; "
              f"print(json.dumps([m for m in {IO_MODULES!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_core_has_its_modules():
    # The parametrised test below must not pass by finding nothing.
    assert {"relay.core.http1", "relay.core.outbox", "relay.core.ingest"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_event_loop_socket_or_database(module):
    assert loaded_by(module) == []


def test_the_check_fails_for_a_module_that_loads_io():
    assert "trio" in loaded_by("relay.store.base")
