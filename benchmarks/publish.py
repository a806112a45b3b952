"""Subscribers that publish: round trip and delivery latency at a fixed rate.

One WebSocket publisher sends ``{"type": "publish", "channel": "bench",
"key": N, "data": {"t": <CLOCK_MONOTONIC ns at send>, "pad": ...}}`` at a
fixed rate (its schedule does not wait for answers); ``subs`` other
WebSocket subscribers of ``bench`` read the events. Two latencies, both on
the load core's clock:

- round trip: the publish sent -> its ``published`` answer read by the
  publisher (the relay answers once the store has it);
- delivery: the publish sent -> the event read by another subscriber.

Completeness: the publisher got one ``published`` per message, with
distinct ids, and every subscriber got every message once, in order.

The client is Python (trio, wsproto and msgspec, the relay's own
dependencies) in the benchmark process on the load core, the same for both
servers. It costs about 40 us per message it reads, so the subscribers are
few (3 by default: 4,000 messages/s read in all at 1,000/s published) to
keep it well below its core; its CPU share is in the table, and the fan-out
to many subscribers is what the ``fanout`` and ``latency`` groups measure
with the compiled client.
The baseline (``baseline_aiohttp.py``) answers the same message the way a
script would: store in its list, fan out, answer ``published``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

PAD = "x" * 200
_decode = msgspec.json.decode


class Client:
    """A bare WebSocket client: connect, send text, read text messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.parts: list[str] = []

    @classmethod
    async def open(cls, port: int, target: str) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(client.ws.send(Request(host="127.0.0.1", target=target, subprotocols=["relay.v1"])))
        while True:
            client.ws.receive_data(await stream.receive_some(65536))
            for event in client.ws.events():
                if isinstance(event, AcceptConnection):
                    return client
                raise RuntimeError(f"handshake refused: {event!r}")

    async def send(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def messages(self):
        while True:
            data = await self.stream.receive_some(1 << 18)
            if not data:
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.parts.append(event.data)
                    if event.message_finished:
                        text, self.parts = "".join(self.parts), []
                        yield text
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def _run(port: int, rate: float, seconds: float, subs: int) -> dict[str, Any]:
    count = int(rate * seconds)
    sent: dict[str, int] = {}
    round_trips: list[float] = []
    delivered: list[float] = []
    ids: set[str] = set()
    per_sub: list[list[int]] = [[] for _ in range(subs)]
    answered = trio.Event()
    errors: list[str] = []

    async def subscriber(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        client = await Client.open(port, "/ws?channel=bench")
        async with client.stream:
            first = True
            async for text in client.messages():
                now = time.monotonic_ns()
                if first:
                    first = False
                    task_status.started()
                    continue
                event = _decode(text)
                if event.get("type") != "event":
                    continue
                data = event["data"]
                delivered.append((now - data["t"]) / 1e6)
                per_sub[i].append(data["n"])
                if len(per_sub[i]) == count:
                    return

    async with trio.open_nursery() as nursery:
        for i in range(subs):
            await nursery.start(subscriber, i)
        publisher = await Client.open(port, "/ws")

        async def read_answers() -> None:
            async for text in publisher.messages():
                now = time.monotonic_ns()
                answer = _decode(text)
                if answer.get("type") == "published":
                    round_trips.append((now - sent[answer["key"]]) / 1e6)
                    ids.add(answer["id"])
                elif answer.get("type") == "error":
                    errors.append(text)
                if len(round_trips) + len(errors) == count:
                    answered.set()
                    return

        async with publisher.stream:
            nursery.start_soon(read_answers)
            async for _ in publisher.messages():  # the welcome
                break
            start = trio.current_time()
            for n in range(count):
                await trio.sleep_until(start + n / rate)
                key = str(n)
                t = time.monotonic_ns()
                sent[key] = t
                await publisher.send(f'{{"type":"publish","channel":"bench","key":"{key}",'
                                     f'"data":{{"t":{t},"n":{n},"pad":"{PAD}"}}}}')
            with trio.move_on_after(20):
                await answered.wait()
        with trio.move_on_after(20):
            while any(len(got) < count for got in per_sub):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    complete = (not errors and len(round_trips) == count and len(ids) == count
                and all(got == list(range(count)) for got in per_sub))
    return {"count": count, "round_trips": round_trips, "delivered": delivered, "complete": complete,
            "errors": errors[:3], "answers": len(round_trips), "got": [len(g) for g in per_sub]}


def measure(port: int, pid: int, *, rate: float, seconds: float, subs: int) -> tuple[bool, str, dict[str, Any]]:
    """Run the load against the server on ``port`` (process ``pid``):
    (complete, why not, figures)."""
    from .run import proc_cpu, proc_status

    cpu0, t0, me0 = sum(proc_cpu(pid)), time.monotonic(), time.process_time()
    out = trio.run(_run, port, rate, seconds, subs)
    wall = time.monotonic() - t0
    cpu = sum(proc_cpu(pid)) - cpu0
    values = {
        "events": out["count"], "rate": rate,
        "srv_cpu": cpu / wall, "cli_cpu": (time.process_time() - me0) / wall,
        "us_msg": cpu / out["count"] * 1e6 if out["count"] else None,
        "rt_p50": percentile(out["round_trips"], 0.50), "rt_p99": percentile(out["round_trips"], 0.99),
        "dl_p50": percentile(out["delivered"], 0.50), "dl_p99": percentile(out["delivered"], 0.99),
        "dl_max": max(out["delivered"], default=float("nan")), "peak_mb": proc_status(pid, "VmHWM") / 2**20,
    }
    why = "" if out["complete"] else (f"answers {out['answers']}/{out['count']}, subscribers got {out['got']}, "
                                      f"errors {out['errors']}")
    return out["complete"], why, values


PUBLISH_COLS = ["events", "rate", "us_msg", "srv_cpu", "cli_cpu", "rt_p50", "rt_p99", "dl_p50", "dl_p99", "dl_max",
                "peak_mb"]
PUBLISH_HEAD = {"us_msg": "srv us/msg", "rt_p50": "round trip p50 ms", "rt_p99": "round trip p99 ms",
                "dl_p50": "to subscriber p50 ms", "dl_p99": "to subscriber p99 ms", "dl_max": "to subscriber max ms"}


def scenario(tmp: Path, kind: str, *, engine: str = "memory", rate: float = 1000, seconds: float = 5,
             subs: int = 3):
    from .run import Result, Server

    server = Server(kind, tmp, engine=engine)
    try:
        ok, why, values = measure(server.port, server.proc.pid, rate=rate, seconds=seconds, subs=subs)
        values["peak_mb"] = server.peak() / 2**20
        return Result(ok, why, values)
    except Exception as exc:  # a failed run is a row that says why, not a dead suite
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        return Result(False, f"{type(exc).__name__}: {exc}", {})
    finally:
        server.stop()

