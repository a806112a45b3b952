"""A full disk under the SQLite store: ``/readyz`` says not ready while no
write can succeed, ready again once space is freed, and nothing acknowledged
is lost.

The disk is real: a 4 MiB tmpfs mounted for the test (``mount`` needs root or
CAP_SYS_ADMIN; where neither is had, the test is skipped and says why), filled
with a file until the kernel answers ENOSPC, then freed by deleting that file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from conftest import config_text

ON_DISK = 'engine = "sqlite"\npath = "disk/relay.db"'


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/disk: a 4 MiB filesystem of its own."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root or CAP_SYS_ADMIN needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory) -> None:
    """Write a file until the filesystem has no byte left."""
    with open(directory / "filler", "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


async def test_readyz_is_503_while_the_disk_is_full_and_200_once_space_is_freed_with_nothing_acknowledged_lost(
        daemon, small_disk):
    relay = daemon(config_text(store=ON_DISK))
    acked: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        async def post(n: int) -> httpx.Response:
            r = await http.post(f"{relay.base}/hooks/demo", json={"n": n, "pad": "x" * 2000})
            if r.status_code == 202:
                acked[r.json()["id"]] = n
            return r

        for n in range(20):
            assert (await post(n)).status_code == 202
        assert (await http.get(f"{relay.base}/readyz")).status_code == 200

        fill(small_disk)
        # Webhooks fail once what the WAL already holds is used up.
        refused = None
        for n in range(20, 220):
            r = await post(n)
            if r.status_code == 503:
                refused = r
                break
            assert r.status_code == 202
        assert refused is not None, "the full disk never refused a webhook"
        assert refused.json()["error"] == "unavailable" and "retry-after" in refused.headers

        # Not ready: a load balancer stops sending here, and keeps not
        # sending while the disk stays full.
        for _ in range(2):
            r = await http.get(f"{relay.base}/readyz")
            assert r.status_code == 503 and r.json() == {"status": "unavailable"}
        assert (await post(1000)).status_code == 503

        os.unlink(small_disk / "filler")
        # Ready again at once: no webhook had to try first.
        assert (await http.get(f"{relay.base}/readyz")).status_code == 200
        for n in range(2000, 2010):
            assert (await post(n)).status_code == 202

    relay.signal(signal.SIGTERM)
    assert relay.wait() == 0
    assert b"the event store cannot write" in relay.stderr and b"the event store writes again" in relay.stderr

    # Every acknowledged webhook is in the log, once, in order, and nothing else.
    again = daemon(config_text(store=ON_DISK))
    stored: dict[str, int] = {}
    async with open_websocket_url(f"{again.ws_base}/ws?channel=demo&since=", max_message_size=2**20) as ws:
        welcome = json.loads(await ws.get_message())
        with trio.fail_after(10):
            while not stored or list(stored)[-1] != welcome["id"]:
                event = json.loads(await ws.get_message())
                stored[event["id"]] = event["data"]["n"]
    assert stored == acked
    assert list(stored) == sorted(stored, key=int)
