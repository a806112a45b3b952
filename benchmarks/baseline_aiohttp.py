"""The peer baseline: an idiomatic aiohttp relay, the "twenty-line script".

It serves the relay's hot routes with the same observable behaviour, so
the load clients cannot tell the two apart:

- ``POST /hooks/{route}``: the body must be JSON (stdlib ``json``, as a script
  would); the event is appended to an in-memory list and the answer is 202
  ``{"id", "channel", "duplicate"}``. The channel is the route's name.
- ``GET /ws?channel=NAME[&since=ID]``: a welcome frame
  ``{"type":"welcome","id":HEAD,"channels":[...]}``, the stored events after
  ``since`` if given, then one text frame per live event, carrying the
  envelope the relay sends (same keys, same order, ``data`` verbatim).
- a WebSocket client's ``{"type": "publish", "channel", "data", "key"}``
  (contract section 10): stored and fanned out like a webhook (route
  ``"ws"``), answered ``{"type": "published", "id", "channel", "key"}``.
- ``GET /sse?channel=NAME[&since=ID]`` (or ``Last-Event-ID``): a
  ``text/event-stream`` ``StreamResponse`` (chunked), opening with the
  relay's ``retry: 1000`` and ``: welcome HEAD`` comment, then each event
  as ``id: ID`` and ``data: ENVELOPE`` lines, as the relay's ``sse.py``.

What makes it idiomatic rather than naive: the envelope of an event is encoded
once and shared by every subscriber (the SSE message too, once per event
when an SSE subscriber wants it); each subscriber has a bounded
``asyncio.Queue`` (1024 events, as the relay's default) drained by its own
writer task with ``send_str`` (``StreamResponse.write`` for SSE); a full
queue closes the subscriber with 1013 (the relay's ``disconnect`` policy),
or ends its SSE stream.

With ``--endpoints FILE`` (JSON, see ``Outbound``) it also sends what it
receives to webhook endpoints, as a competent developer would write it
with aiohttp: one ``ClientSession`` (keep-alive pool, ``limit`` =
``max_in_flight``) and one worker task per endpoint, an ``asyncio.Queue``
of deliveries owed, a semaphore of ``max_in_flight`` attempts, Standard
Webhooks signing (``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` ``v1,`` HMAC-SHA256 under the ``whsec_`` secret, plus
``relay-channel`` and ``relay-attempt``, the relay's headers), the body as
received with its ``Content-Type``, no redirect followed, and retries in
memory on the same schedule shape (``retry[n]`` seconds before attempt n+1,
+/- ``jitter``, ``Retry-After`` on a 429 or 503 honoured up to the longest
delay) with ``loop.call_later``. What it does not do that the relay does:
persist anything, ramp a failing endpoint down to one attempt at a time,
check addresses, disable endpoints, keep an attempt log.

Run it on its own: ``python benchmarks/baseline_aiohttp.py --port 0`` prints
``baseline: listening on http://127.0.0.1:PORT`` on stderr. With
``--tls-cert PEM --tls-key PEM`` it serves https and wss instead (aiohttp's
``ssl_context``, a default server context with TLS 1.2 at least, as the
relay's ``tls.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import random
import ssl
import sys
import time

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

QUEUE = 1024


class Subscriber:
    __slots__ = ("ws", "queue", "writer", "sse")

    def __init__(self, ws: web.StreamResponse, sse: bool = False) -> None:
        self.ws = ws
        self.sse = sse  # an event stream: the queue holds SSE messages (bytes)
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(QUEUE)
        self.writer: asyncio.Task[None] | None = None


def sse_message(event_id: str, text: str) -> bytes:
    return f"id: {event_id}\ndata: {text}\n\n".encode()


class Endpoint:
    """One webhook endpoint: a session, a queue of deliveries owed, a worker."""

    def __init__(self, spec: dict, retry: list[float], jitter: float, timeout: float, max_in_flight: int) -> None:
        self.id = spec["id"]
        self.url = spec["url"]
        self.channels = set(spec["channels"])
        self.key = base64.b64decode(spec["secret"].removeprefix("whsec_"))
        self.retry = retry
        self.jitter = jitter
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        # (event id, channel, body, content type, attempt)
        self.queue: asyncio.Queue[tuple[str, str, bytes, str, int]] = asyncio.Queue()
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.max_in_flight))
        self.tasks.add(asyncio.create_task(self.worker()))

    async def worker(self) -> None:
        semaphore = asyncio.Semaphore(self.max_in_flight)
        while True:
            item = await self.queue.get()
            await semaphore.acquire()
            task = asyncio.create_task(self.attempt(item, semaphore))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def attempt(self, item: tuple[str, str, bytes, str, int], semaphore: asyncio.Semaphore) -> None:
        event_id, channel, body, content_type, attempt = item
        ok, wait = False, None
        try:
            timestamp = str(int(time.time()))
            mac = hmac.new(self.key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
            headers = {"Content-Type": content_type, "webhook-id": event_id, "webhook-timestamp": timestamp,
                       "webhook-signature": "v1," + base64.b64encode(mac).decode(),
                       "relay-channel": channel, "relay-attempt": str(attempt)}
            assert self.session is not None
            async with self.session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                retry_after = resp.headers.get("Retry-After", "")
                if resp.status in (429, 503) and retry_after.isdigit():
                    wait = min(float(retry_after), max(self.retry))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        finally:
            semaphore.release()
        if not ok and attempt < len(self.retry):
            delay = self.retry[attempt] * (1 + self.jitter * (2 * random.random() - 1))
            if wait is not None:
                delay = max(delay, wait)
            asyncio.get_running_loop().call_later(
                delay, self.queue.put_nowait, (event_id, channel, body, content_type, attempt + 1))


class Outbound:
    """``--endpoints FILE``: {"endpoints": [{"id", "url", "channels", "secret"}],
    "retry": [...], "jitter", "timeout", "max_in_flight"}."""

    def __init__(self, config: dict) -> None:
        retry = [float(x) for x in config.get("retry", [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400])]
        self.endpoints = [Endpoint(e, retry, float(config.get("jitter", 0.2)), float(config.get("timeout", 15.0)),
                                   int(config.get("max_in_flight", 8))) for e in config["endpoints"]]
        self.by_channel: dict[str, list[Endpoint]] = {}
        for e in self.endpoints:
            for c in e.channels:
                self.by_channel.setdefault(c, []).append(e)

    async def start(self) -> None:
        for e in self.endpoints:
            await e.start()

    def published(self, event_id: str, channel: str, body: bytes, content_type: str) -> None:
        for e in self.by_channel.get(channel, ()):
            e.queue.put_nowait((event_id, channel, body, content_type, 1))


class Relay:
    def __init__(self, outbound: Outbound | None = None) -> None:
        self.events: list[tuple[int, str, str]] = []  # (seq, channel, envelope text)
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.keys: dict[str, str] = {}  # publish idempotency key -> event id
        self.outbound = outbound

    @property
    def head(self) -> str:
        return str(self.events[-1][0]) if self.events else ""

    async def hook(self, request: web.Request) -> web.Response:
        route = request.match_info["route"]
        if request.content_type != "application/json":
            return web.json_response({"error": "media_type", "detail": "send application/json"}, status=415)
        body = await request.read()
        try:
            json.loads(body)
        except ValueError as exc:
            return web.json_response({"error": "bad_json", "detail": str(exc)}, status=400)
        channel = route
        event_id = self.store(channel, route, None, {"Content-Type": request.headers.get("Content-Type", "")},
                              body.decode())
        return web.json_response({"id": event_id, "channel": channel, "duplicate": False}, status=202)

    def store(self, channel: str, route: str, delivery: str | None, headers: dict[str, str], data: str) -> str:
        """Append an event and fan it out; its id."""
        seq = len(self.events) + 1
        event_id = str(seq)
        head = json.dumps(
            {
                "type": "event",
                "id": event_id,
                "channel": channel,
                "route": route,
                "ts": int(time.time() * 1000),
                "delivery": delivery,
                "headers": headers,
            },
            separators=(",", ":"),
        )
        # ``data`` is the body verbatim: splice it in rather than re-encode it.
        text = head[:-1] + ',"data":' + data + "}"
        self.events.append((seq, channel, text))
        message = None
        for sub in list(self.subscribers.get(channel, ())):
            if sub.sse and message is None:
                message = sse_message(event_id, text)
            try:
                sub.queue.put_nowait(message if sub.sse else text)
            except asyncio.QueueFull:
                self.slow(sub)
        if self.outbound is not None:
            self.outbound.published(event_id, channel, data.encode(), headers.get("Content-Type", ""))
        return event_id

    def slow(self, sub: Subscriber) -> None:
        """A full queue: drop the subscriber with 1013, as the relay's "disconnect"."""
        for subs in self.subscribers.values():
            subs.discard(sub)
        if sub.writer is not None:
            sub.writer.cancel()
        if sub.sse:
            return  # the cancelled writer ends the stream
        task = asyncio.create_task(sub.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"slow consumer"))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        channels = [c for v in request.query.getall("channel", []) for c in v.split(",") if c]
        since = request.query.get("since")
        ws = web.WebSocketResponse(protocols=("relay.v1",), heartbeat=20.0)
        await ws.prepare(request)
        sub = Subscriber(ws)
        await ws.send_str(json.dumps({"type": "welcome", "id": self.head, "channels": channels}, separators=(",", ":")))
        if since is not None:
            after = int(since or 0)
            for seq, channel, text in list(self.events):
                if seq > after and channel in channels:
                    sub.queue.put_nowait(text)
        for channel in channels:
            self.subscribers.setdefault(channel, set()).add(sub)
        sub.writer = asyncio.create_task(self.write(sub))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if msg.type == WSMsgType.TEXT:
                    await self.client_message(ws, msg.data)
        finally:
            sub.writer.cancel()
            for channel in channels:
                self.subscribers.get(channel, set()).discard(sub)
        return ws

    async def client_message(self, ws: web.WebSocketResponse, text: str) -> None:
        """``publish`` (contract section 10), as a script would: stored in the
        list, fanned out like a webhook, answered ``published``; a repeated
        key answers the first id."""
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if msg.get("type") != "publish":
            return
        key, channel = msg.get("key"), msg.get("channel")
        if key is not None and key in self.keys:
            event_id = self.keys[key]
        else:
            event_id = self.store(channel, "ws", key, {"Content-Type": "application/json"},
                                  json.dumps(msg.get("data"), separators=(",", ":")))
            if key is not None:
                self.keys[key] = event_id
        await ws.send_str(json.dumps({"type": "published", "id": event_id, "channel": channel, "key": key},
                                     separators=(",", ":")))

    async def write(self, sub: Subscriber) -> None:
        while True:
            text = await sub.queue.get()
            await sub.ws.send_str(text)

    async def sse(self, request: web.Request) -> web.StreamResponse:
        channels = [c for v in request.query.getall("channel", []) for c in v.split(",") if c]
        since = request.headers.get("Last-Event-ID") or request.query.get("since")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sub = Subscriber(resp, sse=True)
        if since is not None:
            after = int(since or 0)
            for seq, channel, text in list(self.events):
                if seq > after and channel in channels:
                    sub.queue.put_nowait(sse_message(str(seq), text))
        for channel in channels:
            self.subscribers.setdefault(channel, set()).add(sub)
        await resp.write(f"retry: 1000\n: welcome {self.head}\n\n".encode())
        sub.writer = asyncio.create_task(self.write_sse(sub))
        try:
            # Ends when the client goes (the write fails) or the writer is
            # cancelled as a slow consumer; returning ends the stream.
            await asyncio.wait([sub.writer])
        finally:
            sub.writer.cancel()
            for channel in channels:
                self.subscribers.get(channel, set()).discard(sub)
        return resp

    async def write_sse(self, sub: Subscriber) -> None:
        while True:
            message = await sub.queue.get()
            try:
                await sub.ws.write(message)  # type: ignore[arg-type]
            except ConnectionError:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0: let the OS pick, print it")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve https and wss")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--endpoints", help="JSON: webhook endpoints to send what is received to")
    args = parser.parse_args()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
    outbound = None
    if args.endpoints:
        with open(args.endpoints) as f:
            outbound = Outbound(json.load(f))
    relay = Relay(outbound)
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/hooks/{route}", relay.hook)
    app.router.add_get("/ws", relay.websocket)
    app.router.add_get("/sse", relay.sse)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        if outbound is not None:
            await outbound.start()
        site = web.TCPSite(runner, args.host, args.port, backlog=4096, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "https" if context else "http"
        print(f"baseline: listening on {scheme}://{args.host}:{port}", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
