"""docs/recipes.md's nginx config, run by a real nginx in front of a relay.

The config is read from the recipe itself (only the ports and the certificate
paths are put in), so the doc and this test cannot drift apart. What it
checks is what an operator would notice: webhooks reuse the upstream
connections (`keepalive 32` is in use: no new connection, and no TIME-WAIT
socket, per request), a WebSocket upgrades through the proxy, and an SSE
stream arrives event by event, not when a buffer fills.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary: apt-get install -y nginx (.ci/run does)")

WEBHOOKS = 20


def recipe() -> str:
    """The first nginx block of the recipe "Behind nginx"."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    section = text.split("## Behind nginx", 1)[1]
    match = re.search(r"^```nginx\n(.*?)^```", section, re.M | re.S)
    assert match, "docs/recipes.md: no nginx block under 'Behind nginx'"
    return match[1]


def substitute(conf: str, pattern: str, replacement: str) -> str:
    out, count = re.subn(pattern, replacement, conf, flags=re.M)
    assert count == 1, f"the recipe no longer has {pattern!r} once; update this test with the doc"
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connections_to(port: int) -> set[str]:
    """The client ends of the TCP connections to ``port`` that the kernel
    still remembers, whatever their state (established, TIME-WAIT after
    either side closed): one per connection the relay accepted."""
    clients = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, state = line.split()[1:4]
            if state == "0A":  # LISTEN
                continue
            if int(remote.split(":")[1], 16) == port:
                clients.add(local)
            elif int(local.split(":")[1], 16) == port:
                clients.add(remote)
    return clients


@asynccontextmanager
async def running_nginx(tmp_path: Path, relay_port: int, cert: Path, key: Path):
    port = free_port()
    conf = recipe()
    conf = substitute(conf, r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{relay_port};")
    conf = substitute(conf, r"listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    conf = substitute(conf, r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};")
    conf = substitute(conf, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "relay.conf").write_text(conf)
    # Everything nginx writes lives under the prefix, so it runs without root;
    # as root its workers would otherwise drop to a user that cannot enter tmp_path.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    include {prefix / "relay.conf"};
}}
""")
    process = await trio.lowlevel.open_process(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(10):
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"nginx exited {process.returncode}: {(prefix / 'error.log').read_text()}")
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        yield port
    finally:
        process.terminate()
        with trio.move_on_after(10) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            await process.wait()


@pytest.fixture
def trusted(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_the_nginx_recipe_keeps_upstream_connections_upgrades_websockets_and_streams_sse(
        tmp_path, tls_files, trusted):
    cert, key = tls_files
    async with running_relay(config_text()) as relay, \
            running_nginx(tmp_path, relay.port, cert, key) as port, \
            httpx.AsyncClient(verify=trusted, timeout=10) as http:
        base = f"https://127.0.0.1:{port}"

        # Webhooks: nginx's upstream keepalive pool carries them all on one
        # or two connections. With `'' close` in the map it opened one per
        # request, and each left a TIME-WAIT socket behind.
        before = connections_to(relay.port)
        for n in range(WEBHOOKS):
            r = await http.post(f"{base}/hooks/demo", json={"n": n})
            assert r.status_code == 202, r.text
        opened = connections_to(relay.port) - before
        assert 1 <= len(opened) <= 2, f"{WEBHOOKS} webhooks through nginx took {len(opened)} upstream connections"

        # A WebSocket upgrades through it and gets events live.
        async with open_websocket_url(f"wss://127.0.0.1:{port}/ws?channel=demo", ssl_context=trusted) as ws:
            assert '"type":"welcome"' in await ws.get_message()
            r = await http.post(f"{base}/hooks/demo", json={"via": "ws"})
            with trio.fail_after(5):
                assert '"data":{"via":"ws"}' in await ws.get_message()

        # SSE: each event arrives as it is posted while the stream stays open.
        async with http.stream("GET", f"{base}/sse?channel=demo") as sse:
            assert sse.status_code == 200 and sse.headers["content-type"] == "text/event-stream"
            lines = sse.aiter_lines()
            with trio.fail_after(5):
                while not (await lines.__anext__()).startswith(": welcome"):
                    pass
            for n in range(3):
                r = await http.post(f"{base}/hooks/demo", json={"sse": n})
                with trio.fail_after(5):
                    while not (line := await lines.__anext__()).startswith("data: "):
                        pass
                assert line.endswith(f'"data":{{"sse":{n}}}}}'), line
