"""Which HTTP client the relay's outbound webhooks should use (issue 14).

    .venv/bin/python -m benchmarks.outbound_clients                 # ~3 minutes
    .venv/bin/python -m benchmarks.outbound_clients --count 5000 --conc 8

In one run, the same load through each candidate: N POSTs of a 1 KiB body
with webhook-like headers, keep-alive, C requests in flight spread
round-robin over 10 ports of a local receiver (10 endpoint hosts), until N
are answered or S seconds pass. Candidates:

- ``h11-pool``: the relay's own client (``relay.outbound.client.Pool``): h11
  over trio sockets, keep-alive pool per (scheme, host, port), the address
  check (``allow_private`` = 127.0.0.0/8) on every new and reused connection;
- ``httpx``: ``httpx.AsyncClient`` under trio (anyio, httpcore);
- ``aiohttp``: aiohttp's ``ClientSession`` under trio through trio-asyncio,
  each request crossing the bridge (``aio_as_trio``) as the relay's trio
  tasks would;

(every pool holds up to 512 connections, the relay's ``max_connections``,
idle ones included, so none closes connections the next request needs);
- ``h11-new``: the relay's client as it was, a new connection per request
  (reference: what keep-alive saves);
- ``aiohttp-asyncio``: aiohttp on plain asyncio, no trio (reference: what
  the bridge costs; the relay cannot run this way).

Each candidate runs in a fresh Python process pinned to core 0, warms up
(connections made, code loaded), then is measured alone: requests/s and its
own CPU seconds per request (``resource.getrusage``, user + system, over the
measured window). The receiver is ``responder.c``, compiled here with gcc
into a temporary directory, pinned to core 1; its CPU share over each window
(from /proc) shows its headroom, and its counters say how many connections
the candidate opened. Ratios are against ``--baseline`` (httpx).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT_CORE = {0}
RECEIVER_CORE = {1} if (os.cpu_count() or 1) > 1 else {0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
CANDIDATES = ["h11-pool", "httpx", "aiohttp", "h11-new", "aiohttp-asyncio"]
BODY = b'{"type":"invoice.paid","pad":"' + b"x" * 992 + b'"}'
assert len(BODY) == 1024
HEADERS = [("Content-Type", "application/json"), ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
           ("webhook-timestamp", "1700000000"),
           ("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
           ("relay-channel", "stripe.invoice"), ("relay-attempt", "1")]


# -- the client side: one candidate, in its own process ---------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _handshake() -> None:
    """Warm-up done: wait for the parent's go (it reads the receiver's counters first)."""
    print(json.dumps({"warm": True}), flush=True)
    sys.stdin.readline()


async def _drive_trio(post, urls: list[str], conc: int, count: int, seconds: float, warm: int) -> dict:
    import trio

    async def phase(n: int, limit: float) -> tuple[int, int]:
        sent = done = errors = 0
        deadline = trio.current_time() + limit

        async def worker() -> None:
            nonlocal sent, done, errors
            while sent < n and trio.current_time() < deadline:
                i = sent
                sent += 1
                status = await post(urls[i % len(urls)])
                if status == 200:
                    done += 1
                else:
                    errors += 1

        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(worker)
        return done, errors

    await phase(warm, 30)
    await trio.to_thread.run_sync(_handshake)
    cpu, t = _cpu(), time.perf_counter()
    done, errors = await phase(count, seconds)
    return {"requests": done, "errors": errors, "seconds": time.perf_counter() - t, "cpu": _cpu() - cpu}


async def _drive_asyncio(post, urls: list[str], conc: int, count: int, seconds: float, warm: int) -> dict:
    import asyncio

    async def phase(n: int, limit: float) -> tuple[int, int]:
        sent = done = errors = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit

        async def worker() -> None:
            nonlocal sent, done, errors
            while sent < n and loop.time() < deadline:
                i = sent
                sent += 1
                status = await post(urls[i % len(urls)])
                if status == 200:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
        return done, errors

    await phase(warm, 30)
    await asyncio.get_running_loop().run_in_executor(None, _handshake)
    cpu, t = _cpu(), time.perf_counter()
    done, errors = await phase(count, seconds)
    return {"requests": done, "errors": errors, "seconds": time.perf_counter() - t, "cpu": _cpu() - cpu}


def client_main(kind: str, urls: list[str], conc: int, count: int, seconds: float, warm: int) -> dict:
    os.sched_setaffinity(0, CLIENT_CORE)
    if kind in ("h11-pool", "h11-new"):
        import trio

        from relay.core.addresses import networks
        from relay.outbound import client

        allow = networks(["127.0.0.0/8"])

        async def main() -> dict:
            if kind == "h11-new":
                async def post(url: str) -> int | None:
                    return (await client.post(url, HEADERS, BODY, timeout=15, allow=allow)).status
                return await _drive_trio(post, urls, conc, count, seconds, warm)
            pool = client.Pool(max_connections=512)  # the relay's default
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run)

                async def post(url: str) -> int | None:
                    return (await pool.post(url, HEADERS, BODY, timeout=15, allow=allow)).status
                result = await _drive_trio(post, urls, conc, count, seconds, warm)
                result["opened"] = pool.opened
                nursery.cancel_scope.cancel()
            return result
        return trio.run(main)
    if kind == "httpx":
        import httpx
        import trio

        async def main() -> dict:
            limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
            async with httpx.AsyncClient(limits=limits, timeout=15) as http:
                async def post(url: str) -> int:
                    return (await http.post(url, content=BODY, headers=HEADERS)).status_code
                return await _drive_trio(post, urls, conc, count, seconds, warm)
        return trio.run(main)
    if kind == "aiohttp":
        import aiohttp
        import trio
        import trio_asyncio

        async def main() -> dict:
            async with trio_asyncio.open_loop():
                async def session_open():
                    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, limit_per_host=0))
                session = await trio_asyncio.aio_as_trio(session_open)()

                async def one(url: str) -> int:
                    async with session.post(url, data=BODY, headers=HEADERS) as r:
                        await r.read()
                        return r.status
                bridged = trio_asyncio.aio_as_trio(one)
                try:
                    return await _drive_trio(bridged, urls, conc, count, seconds, warm)
                finally:
                    await trio_asyncio.aio_as_trio(session.close)()
        return trio.run(main)
    if kind == "aiohttp-asyncio":
        import asyncio

        import aiohttp

        async def main() -> dict:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, limit_per_host=0)) as session:
                async def post(url: str) -> int:
                    async with session.post(url, data=BODY, headers=HEADERS) as r:
                        await r.read()
                        return r.status
                return await _drive_asyncio(post, urls, conc, count, seconds, warm)
        return asyncio.run(main())
    raise SystemExit(f"unknown client {kind}")


# -- the parent: the receiver, each candidate in turn, the table -------------------------


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Receiver:
    def __init__(self, binary: Path, ports: int) -> None:
        self.proc = subprocess.Popen([str(binary), str(ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, preexec_fn=lambda: os.sched_setaffinity(0, RECEIVER_CORE))
        assert self.proc.stdout is not None
        self.ports = json.loads(self.proc.stdout.readline())["ports"]

    def stats(self) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats = json.loads(self.proc.stdout.readline())
        stats["cpu"] = _proc_cpu(self.proc.pid)
        return stats

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


def measure(receiver: Receiver, kind: str, conc: int, count: int, seconds: float, warm: int) -> dict:
    urls = [f"http://127.0.0.1:{port}/hooks/relay" for port in receiver.ports]
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.outbound_clients", "--child", kind,
                              "--urls", ",".join(urls), "--conc", str(conc), "--count", str(count),
                              "--seconds", str(seconds), "--warm", str(warm)],
                             cwd=HERE.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        return {"failed": f"exit {child.returncode}"}
    before = receiver.stats()
    t = time.perf_counter()
    child.stdin.write("go\n")
    child.stdin.flush()
    result = json.loads(child.stdout.readline())
    wall = time.perf_counter() - t
    after = receiver.stats()
    child.wait(30)
    result["receiver_share"] = (after["cpu"] - before["cpu"]) / wall
    result["connections"] = after["accepted"] - before["accepted"]
    result["received"] = after["requests"] - before["requests"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CANDIDATES))
    parser.add_argument("--conc", default="8,64", help="requests in flight, comma-separated")
    parser.add_argument("--count", type=int, default=20_000, help="requests measured per candidate")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most this long per candidate")
    parser.add_argument("--warm", type=int, default=1000, help="requests before the measured window")
    parser.add_argument("--hosts", type=int, default=10, help="receiver ports (endpoint hosts)")
    parser.add_argument("--baseline", default="httpx")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = client_main(args.child, args.urls.split(","), int(args.conc), args.count, args.seconds, args.warm)
        print(json.dumps(result), flush=True)
        return 0

    if shutil.which("gcc") is None:
        print("benchmarks: gcc is needed to build the receiver", file=sys.stderr)
        return 2
    clients = args.clients.split(",")
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        binary = Path(tmp) / "responder"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "responder.c")], check=True)
        receiver = Receiver(binary, args.hosts)
        try:
            import platform
            print(f"# Python {platform.python_version()}, {os.cpu_count()} cores; client on core "
                  f"{min(CLIENT_CORE)}, receiver (C, epoll) on core {min(RECEIVER_CORE)}; "
                  f"1 KiB POSTs over {args.hosts} ports; at most {args.count} requests or "
                  f"{args.seconds:g} s per candidate; load average {os.getloadavg()[0]:.2f}", flush=True)
            for conc in (int(c) for c in args.conc.split(",")):
                rows = {}
                for kind in clients:
                    rows[kind] = measure(receiver, kind, conc, args.count, args.seconds, args.warm)
                    print(f"#   {conc} in flight, {kind}: {json.dumps(rows[kind])}", file=sys.stderr, flush=True)
                report(conc, rows, args.baseline)
        finally:
            receiver.close()
    return 0


def report(conc: int, rows: dict[str, dict], baseline: str) -> None:
    print(f"\n### {conc} in flight\n")
    print("| client | requests | req/s | client CPU us/req | x req/s | x CPU/req | connections | errors "
          "| receiver CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows.get(baseline, {})
    base_rate = base.get("requests", 0) / base["seconds"] if base.get("seconds") else None
    base_cpu = base["cpu"] / base["requests"] if base.get("requests") else None
    for kind, r in rows.items():
        if "failed" in r or not r.get("requests"):
            print(f"| {kind} | failed: {r.get('failed', 'no request answered')} | | | | | | | |")
            continue
        rate = r["requests"] / r["seconds"]
        cpu = r["cpu"] / r["requests"]
        x_rate = f"{rate / base_rate:.2f}" if base_rate else "-"
        x_cpu = f"{cpu / base_cpu:.2f}" if base_cpu else "-"
        print(f"| {kind} | {r['requests']} | {rate:,.0f} | {cpu * 1e6:,.0f} | {x_rate} | {x_cpu} | "
              f"{r['connections']} | {r['errors']} | {r['receiver_share'] * 100:.0f} % |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
