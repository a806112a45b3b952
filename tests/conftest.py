"""Fixtures that run real relays: in this process (fast, memory store) or as a
``relay serve`` subprocess (the daemon as a user runs it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from relay.server.app import App, serve
from relay.config.load import parse
from relay.config.model import StoreConfig
from relay.core.envelope import Draft
from relay.store import Store, open_store

LISTENING = re.compile(rb"listening on (https?)://([^\s:]+|\[[^\]]+\]):(\d+)")


def config_text(extra: str = "", *, store: str = 'engine = "memory"') -> str:
    """A config on port 0 with a few routes; ``extra`` is appended."""
    base = f"""
    [server]
    listen = "127.0.0.1:0"
    shutdown_grace = 5.0

    [store]
    {store}

    [routes.demo]
    channel = "demo"

    [routes.gh]
    channel = "github.{{header:X-GitHub-Event}}"
    forward_headers = ["X-GitHub-Event", "X-GitHub-Delivery"]

    [routes.pay]
    channel = "pay.{{json:type}}"

    [routes.signed]
    channel = "{{route}}"
    verify = "hmac-sha256"
    secret = "s3cret"
    signature_header = "X-Signature"
    signature_prefix = "sha256="
    """
    return textwrap.dedent(base) + textwrap.dedent(extra)


class InProcess:
    def __init__(self, app: App) -> None:
        self.app = app
        host, port = app.address
        self.base = f"http://{host}:{port}"
        self.ws_base = f"ws://{host}:{port}"
        self.port = port


@asynccontextmanager
async def running_relay(text: str | None = None, env: dict[str, str] | None = None):
    """Run ``serve`` in the test's nursery; stop it gracefully on exit."""
    config = parse(text if text is not None else config_text(), env=env or {})
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app = await nursery.start(serve, config, stop)
        try:
            yield InProcess(app)
        finally:
            stop.set()


async def until(condition, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, for at most ``timeout`` seconds.
    For what the relay does on its own once the kernel delivers a close or a
    reset (a subscriber leaving): no event says so, so look every 10 ms."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def draft(channel: str = "demo", *, n: int = 0, dedupe: str | None = None, ts: int | None = None) -> Draft:
    """A webhook ready for a store: body ``{"n": n}``, received at ``ts`` (ms; now by default)."""
    return Draft(channel=channel, route="r", ts=int(time.time() * 1000) if ts is None else ts, delivery=dedupe,
                 headers={"Content-Type": "application/json"}, data=b'{"n":%d}' % n, dedupe=dedupe)


@asynccontextmanager
async def running_store(config: StoreConfig, published: list | None = None):
    """A store engine running in the test's nursery; what it publishes goes to ``published``."""
    store: Store = open_store(config, (published if published is not None else []).extend)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        try:
            yield store
        finally:
            await store.close()
            nursery.cancel_scope.cancel()


# A test CA and a certificate for 127.0.0.1 it signed (TLS tests).
@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_files(ca, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "relay.pem", tmp_path / "relay.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
async def relay():
    async with running_relay() as r:
        yield r


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class Daemon:
    """A ``relay serve`` subprocess."""

    def __init__(self, config_path: Path, cwd: Path, env: dict[str, str] | None = None,
                 preexec_fn=None) -> None:
        self.config_path = config_path
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.preexec_fn = preexec_fn  # runs in the child before the relay (e.g. a low file limit)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = b""
        self.base = ""
        self.ws_base = ""

    def start(self, timeout: float = 20.0) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "-c", str(self.config_path)],
            cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=self.preexec_fn,
        )
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), True)
        buf = b""
        import select
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = LISTENING.search(buf)
                if m:
                    scheme, host, port = m.group(1).decode(), m.group(2).decode(), m.group(3).decode()
                    self.base = f"{scheme}://{host}:{port}"
                    self.ws_base = f"{'wss' if scheme == 'https' else 'ws'}://{host}:{port}"
                    self.stderr = buf
                    return self
            elif self.proc.poll() is not None:
                break
        self.stderr = buf
        self.kill()
        raise AssertionError(f"relay did not start: {buf.decode(errors='replace')}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        _, rest = self.proc.communicate(timeout=timeout)
        self.stderr += rest or b""
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None and not self.proc.stderr.closed:
            self.proc.stderr.close()


@pytest.fixture
def daemon(tmp_path):
    """Factory: daemon(config_text) -> started Daemon, killed at teardown."""
    started: list[Daemon] = []

    def make(text: str, env: dict[str, str] | None = None, start: bool = True, preexec_fn=None) -> Daemon:
        path = tmp_path / "relay.toml"
        path.write_text(text)
        d = Daemon(path, tmp_path, env, preexec_fn)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.kill()
