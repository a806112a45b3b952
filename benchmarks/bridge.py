"""What the trio-asyncio bridge costs the nats engine, in this process's CPU.

    .venv/bin/python -m benchmarks.bridge [--nats nats://127.0.0.1:4222] [--redis redis://127.0.0.1:6379/0]

1. One crossing: trio awaits a coroutine that does nothing on the asyncio
   side (``loop.run_aio_coroutine``), 20,000 times.
2. Appends through each cluster engine in this process, batches of 1, 16 and
   100 webhooks (1 KiB bodies), one batch at a time: this process's CPU per
   webhook (the engine servers' own CPU is not counted here; benchmarks.run
   counts it). The nats engine crosses the bridge once per batch, so its
   bridge cost per webhook is the crossing over the batch size; the rest of
   the difference to redis is nats-py.

Each engine writes under a prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import secrets
import time

import trio
import trio_asyncio

from relay.config.model import StoreConfig
from relay.core.envelope import Draft
from relay.store import open_store

BODY = b'{"pad":"' + b"x" * 1000 + b'"}'


def draft(n: int) -> Draft:
    return Draft(channel="bench", route="bench", ts=int(time.time() * 1000), delivery=None,
                 headers={"Content-Type": "application/json"}, data=BODY, dedupe=None)


async def crossing(n: int = 20_000) -> float:
    async def nothing() -> None:
        return None

    async with trio_asyncio.open_loop() as loop:
        for _ in range(1000):  # warm up
            await loop.run_aio_coroutine(nothing())
        cpu = time.process_time()
        for _ in range(n):
            await loop.run_aio_coroutine(nothing())
        return (time.process_time() - cpu) / n * 1e6


async def appends(config: StoreConfig, batch: int, total: int) -> float:
    store = open_store(config, lambda events: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        try:
            for _ in range(max(1, 200 // batch)):  # warm up
                await store.append([draft(0) for _ in range(batch)])
            cpu = time.process_time()
            for i in range(total // batch):
                await store.append([draft(i) for _ in range(batch)])
            return (time.process_time() - cpu) / (total // batch * batch) * 1e6
        finally:
            await store.close()
            nursery.cancel_scope.cancel()


async def cleanup(nats_url: str, redis_url: str, prefix: str) -> None:
    import coredis

    async with coredis.Redis.from_url(redis_url) as client:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(keys)
    from relay.store.nats import names
    from relay.store.nats_bridge import Bridge

    stream, subject = names(prefix)
    async with trio_asyncio.open_loop() as loop:
        bridge = Bridge(loop, nats_url, stream, subject, 5.0)
        await bridge.connect(2.0)

        async def drop() -> None:
            await bridge.js.delete_stream(stream)

        try:
            await loop.run_aio_coroutine(drop())
        finally:
            await bridge.close()


async def main(nats_url: str, redis_url: str) -> None:
    print(f"one crossing of the bridge: {await crossing():.1f} us of CPU")
    prefix = f"relay-bridge-{secrets.token_hex(4)}:"
    try:
        print("| batch | redis us/webhook | nats us/webhook | nats - redis | bridge share (crossing / batch) |")
        print("|---|---|---|---|---|")
        one = await crossing(5000)
        for batch, total in ((1, 2000), (16, 8000), (100, 10000)):
            redis = await appends(StoreConfig(engine="redis", url=redis_url, prefix=prefix), batch, total)
            nats = await appends(StoreConfig(engine="nats", url=nats_url, prefix=prefix), batch, total)
            print(f"| {batch} | {redis:.1f} | {nats:.1f} | {nats - redis:+.1f} | {one / batch:.1f} |")
    finally:
        await cleanup(nats_url, redis_url, prefix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    trio.run(main, args.nats, args.redis)
