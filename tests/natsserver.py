"""NATS for the tests: the shared server with JetStream on 127.0.0.1:4222
(.ci/run starts one), a stream prefix of a test's own (its stream removed
afterwards), and a private nats-server on a free port that a test may stop
and start again, its file store in the test's directory."""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SHARED = ("127.0.0.1", 4222)
NATS_SERVER = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                               else None)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """A NATS server greets every connection with INFO."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def need_shared_nats() -> str:
    if not answers(*SHARED):
        if NATS_SERVER is None:
            pytest.skip("no NATS answers on 127.0.0.1:4222 and there is no nats-server binary to start one")
        pytest.fail("NATS is not answering on 127.0.0.1:4222 (nats-server exists: start it with -js, or run .ci/run)")
    return "nats://127.0.0.1:4222"


@pytest.fixture
def shared_nats() -> str:
    return need_shared_nats()


async def delete_stream(url: str, prefix: str) -> None:
    """Remove what the engine made for ``prefix`` (through the engine's own bridge)."""
    import trio
    import trio_asyncio

    from relay.store.nats import names
    from relay.store.nats_bridge import Bridge

    stream, subject = names(prefix)
    async with trio_asyncio.open_loop() as loop:
        bridge = Bridge(loop, url, stream, subject, 5.0)
        try:
            await bridge.connect(2.0)

            async def drop() -> None:
                base = stream.removesuffix("_log")
                for name in (stream, f"{base}_ob", f"{base}_ob_att"):  # the log, outbound state
                    try:
                        await bridge.js.delete_stream(name)
                    except Exception:  # noqa: BLE001 (absent already)
                        pass

            await loop.run_aio_coroutine(drop())
        finally:
            await bridge.close()
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def nats_prefix(shared_nats):
    """A prefix of this test's own; its stream is deleted afterwards."""
    name = f"relaytest_{secrets.token_hex(6)}:"
    yield name
    await delete_stream(shared_nats, name)


def nats_store(url: str, prefix: str) -> str:
    return f'engine = "nats"\nurl = "{url}"\nprefix = "{prefix}"'


class NatsServer:
    """A private nats-server with JetStream, its file store under the test's
    directory, that a test may stop (kill -9 or SIGTERM) and start again."""

    def __init__(self, workdir: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls  # (certificate, key): the server requires TLS
        if NATS_SERVER is None:
            pytest.skip("nats-server is not installed; the tests that stop NATS need their own")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = workdir / f"nats-{self.port}"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        tls = ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])] if self.tls else []
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir), *tls],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    kill = stop


@pytest.fixture
def own_nats(tmp_path):
    server = NatsServer(tmp_path)
    yield server
    server.stop()
