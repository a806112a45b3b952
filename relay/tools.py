"""The CLI tools beside ``serve``: ``relay tail``, ``relay forward`` and ``relay send``.

- ``tail`` subscribes and prints events: pretty on a terminal, one JSON line
  each when piped.
- ``forward`` re-POSTs each event to a local URL with its forwarded headers
  and its body byte-exact (the envelope's ``data`` is read as ``msgspec.Raw``,
  never re-encoded), so the local app can check the sender's signature itself.
- ``send`` signs a payload as the sender would (``relay.verify.sign``) and
  posts it, for trying a route.

``tail`` and ``forward`` resume by themselves: they remember the last event
id (or, before the first event, the head id of the welcome, which is exactly
where live delivery started) and reconnect with ``since=`` after any drop, so
nothing is missed and nothing comes twice. Only answers that another attempt
cannot change (400, 401, 403, 404; close 4001) end them.

Exit status: 0 done (or stopped with Ctrl-C), 1 a failure (including a
``send`` the relay did not accept), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import IO, Any
from urllib.parse import quote, urlencode

import msgspec
import trio

from .core import wire
from .client import ClientError, Closed, Rejected, Url, open_websocket, parse_url, request

# Retrying cannot change these answers to the upgrade or these close codes.
FATAL_STATUSES = {400, 401, 403, 404, 405, 426}
FATAL_CLOSES = {4001: "the token expired"}
# Headers that describe one hop, not the webhook: a forward sets its own.
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
              "trailer", "proxy-connection"}
RETRY_FIRST, RETRY_MAX = 0.5, 15.0


class ToolError(Exception):
    """What went wrong, for the user; exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


_any = msgspec.json.Decoder()


def header(headers: dict[str, str], name: str) -> str | None:
    name = name.lower()
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def data_of(frame: wire.Envelope, text: str) -> bytes:
    """The envelope's ``data`` exactly as stored, whitespace around it included.

    ``msgspec.Raw`` holds the value without the blanks a body may start or end
    with (a trailing newline is common), and a signature covers those too.
    ``data`` is the envelope's last member, so its text runs from the colon
    after the key to the closing brace.
    """
    whole = text.encode("utf-8")
    token = bytes(frame.data)
    end = whole.rstrip().rindex(b"}")
    start = whole.rindex(token, 0, end) if token else end
    colon = whole.rindex(b":", 0, start) if token else end
    if whole[colon + 1:start].strip():
        return token  # not the layout the relay writes: the value itself is the best there is
    return whole[colon + 1:end]


def body_of(frame: wire.Envelope, text: str) -> bytes:
    """The webhook's body exactly as the sender posted it."""
    raw = data_of(frame, text)
    content_type = (header(frame.headers, "content-type") or "").split(";", 1)[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        # A form body travels as a JSON string holding it verbatim.
        return _any.decode(raw).encode("utf-8")
    return raw


def ws_url(base: Url, channels: str, since: str | None) -> Url:
    path = base.path[:-3] if base.path.endswith("/ws") else base.path
    query = [("channel", channels)] + ([("since", since)] if since is not None else [])
    return Url(base.scheme, base.host, base.port, path, "").join("/ws", urlencode(query))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def subscribe(base: Url, channels: str, since: str | None, token: str | None,
                    handle: Callable[[wire.Envelope, str], Awaitable[None]], count: int | None = None,
                    say: Callable[[str], None] = _say, name: str = "relay") -> None:
    """Call ``handle`` for each event on ``channels``, resuming after every
    drop, until ``count`` events were handled (forever when None)."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    last = since
    handled = 0
    delay = RETRY_FIRST
    connected_once = False
    while True:
        url = ws_url(base, channels, last)
        try:
            ws = await open_websocket(url, headers, subprotocols=[wire.SUBPROTOCOL])
        except Rejected as exc:
            if exc.status in FATAL_STATUSES:
                raise ToolError(f"{name}: the relay refused the subscription: {exc}") from None
            say(f"{name}: {exc}; retrying in {delay:g} s")
        except ClientError as exc:
            say(f"{name}: cannot connect: {exc}; retrying in {delay:g} s")
        else:
            try:
                while True:
                    text = await ws.receive()
                    try:
                        frame = wire.decode_server(text)
                    except msgspec.DecodeError:
                        say(f"{name}: skipped an unreadable frame: {text[:200]!r}")
                        continue
                    if isinstance(frame, wire.Envelope) and frame.id is not None:
                        await handle(frame, text)
                        last = frame.id
                        handled += 1
                        if count is not None and handled >= count:
                            await ws.aclose()
                            return
                    elif isinstance(frame, wire.Welcome):
                        delay = RETRY_FIRST
                        if last is None:
                            last = frame.id or ""
                        if connected_once:
                            say(f"{name}: resumed after {last or 'the start'}")
                        else:
                            say(f"{name}: subscribed to {', '.join(frame.channels)} on {base}")
                        connected_once = True
                    elif isinstance(frame, wire.Gap):
                        say(f"{name}: gap: events after {frame.after or 'the start'} up to {frame.next} "
                            "are no longer in the relay's store")
                    elif isinstance(frame, wire.Error):
                        say(f"{name}: the relay says {frame.error}: {frame.detail}")
            except Closed as exc:
                if exc.code in FATAL_CLOSES:
                    raise ToolError(f"{name}: {FATAL_CLOSES[exc.code]} ({exc})") from None
                say(f"{name}: connection {exc}; resuming after {last or 'the start'} in {delay:g} s")
            finally:
                await ws.aclose()
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


# -- tail --------------------------------------------------------------------


def _style(on: bool) -> Callable[[str, str], str]:
    codes = {"bold": "1", "dim": "2", "blue": "34", "green": "32"}

    def paint(text: str, style: str) -> str:
        return f"\x1b[{codes[style]}m{text}\x1b[0m" if on else text

    return paint


def pretty_event(frame: wire.Envelope, text: str, color: bool = False) -> str:
    paint = _style(color)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((frame.ts or 0) / 1000))
    head = f"{paint(frame.id or '', 'bold')}  {paint(frame.channel or '', 'blue')}  {when}  route {frame.route}"
    if frame.delivery:
        head += f"  delivery {frame.delivery}"
    lines = [head]
    for key, value in frame.headers.items():
        lines.append(f"  {paint(key, 'dim')}: {value}")
    body = body_of(frame, text)
    try:
        shown = msgspec.json.format(body, indent=2).decode("utf-8")
    except msgspec.DecodeError:
        shown = body.decode("utf-8", "replace")
    lines.extend("  " + line for line in shown.splitlines())
    return "\n".join(lines) + "\n\n"


def json_line(text: str) -> str:
    """The envelope as one line: verbatim unless the body spans lines."""
    if "\n" in text or "\r" in text:
        # Re-laid out, not decoded: a number no float holds (1e400) stays as sent.
        text = msgspec.json.format(text, indent=0)
    return text + "\n"


async def tail(url: str, channels: str, since: str | None = None, token: str | None = None,
               out: IO[str] | None = None, pretty: bool | None = None, count: int | None = None) -> None:
    out = out or sys.stdout
    if pretty is None:
        pretty = out.isatty()
    color = pretty and out.isatty() and not os.environ.get("NO_COLOR")

    async def show(frame: wire.Envelope, text: str) -> None:
        out.write(pretty_event(frame, text, color) if pretty else json_line(text))
        out.flush()

    await subscribe(parse_url(url), channels, since, token, show, count, name="relay tail")


# -- forward -----------------------------------------------------------------


async def deliver(frame: wire.Envelope, text: str, to: Url, timeout: float = 30.0) -> str:
    """POST one event (``text`` is its envelope) to ``to``; a line saying how it went."""
    headers = [(k, v) for k, v in frame.headers.items() if k.lower() not in HOP_BY_HOP]
    started = time.perf_counter()
    label = f"{frame.id} {frame.channel} -> POST {to}"
    try:
        response = await request("POST", to, headers, body_of(frame, text), timeout)
    except ClientError as exc:
        return f"{label} failed: {exc}"
    ms = (time.perf_counter() - started) * 1000
    return f"{label} {response.status} {response.reason} ({ms:.0f} ms)".replace("  (", " (")


async def forward(url: str, channels: str, to: str, since: str | None = None, token: str | None = None,
                  out: IO[str] | None = None, count: int | None = None, timeout: float = 30.0) -> None:
    target = parse_url(to)
    out = out or sys.stdout

    async def post(frame: wire.Envelope, text: str) -> None:
        out.write(await deliver(frame, text, target, timeout) + "\n")
        out.flush()

    await subscribe(parse_url(url), channels, since, token, post, count, name="relay forward")


# -- send --------------------------------------------------------------------

EVENT_HEADERS = {"github": "X-GitHub-Event", "shopify": "X-Shopify-Topic"}


def signed_headers(preset: str, secret: str | None, body: bytes, now: float, *, event: str | None = None,
                   delivery: str | None = None, signature_header: str | None = None, prefix: str = "",
                   encoding: str = "hex", content_type: str = "application/json") -> list[tuple[str, str]]:
    """The headers a sender using ``preset`` would post ``body`` with at ``now``."""
    from .core.verify import VerifySpec, sign

    if preset in ("github", "shopify", "standard") and delivery is None:
        delivery = ("msg_" + uuid.uuid4().hex) if preset == "standard" else str(uuid.uuid4())
    if event is not None and preset not in EVENT_HEADERS:
        raise ToolError(f"--event sets {' or '.join(f'{h} ({p})' for p, h in EVENT_HEADERS.items())}; "
                        f"{preset} carries the event type in the body", 2)
    if preset == "github" and event is None:
        event = "push"
    try:
        spec = VerifySpec(scheme=preset, secrets=(secret.encode(),) if secret else (),
                          header=signature_header or "", encoding=encoding, prefix=prefix)
        signed = sign(spec, body, now, delivery)
    except ValueError as exc:
        raise ToolError(f"relay send: {exc}", 2) from None
    headers = [("Content-Type", content_type)]
    if event is not None:
        headers.append((EVENT_HEADERS[preset], event))
    headers.extend(signed.items())
    return headers


async def send(url: str, route: str, body: bytes, headers: list[tuple[str, str]],
               out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    base = parse_url(url)
    target = base.join("/hooks/" + quote(route, safe=""))
    response = await request("POST", target, headers, body)
    text = response.body.decode("utf-8", "replace").strip()
    out.write(f"{response.status} {response.reason} {text}".replace("  ", " ") + "\n")
    out.flush()
    return 0 if 200 <= response.status < 300 else 1


# -- the command line ----------------------------------------------------------


def _run(main: Callable[[], Awaitable[Any]]) -> int:
    try:
        result = trio.run(main)
    except KeyboardInterrupt:
        return 0
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except ClientError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `relay tail ... | head`: the reader has all it wanted.
        sys.stderr.close()
        return 0
    return result if isinstance(result, int) else 0


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("RELAY_TOKEN") or None


def _cmd_tail(args: argparse.Namespace) -> int:
    pretty = {"auto": None, "pretty": True, "json": False}[args.format]
    return _run(lambda: tail(args.url, args.channel, args.since, _token(args), pretty=pretty, count=args.count))


def _cmd_forward(args: argparse.Namespace) -> int:
    return _run(lambda: forward(args.url, args.channel, args.to, args.since, _token(args), count=args.count,
                                timeout=args.timeout))


def _cmd_send(args: argparse.Namespace) -> int:
    secret = args.secret
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            print(f"relay send: environment variable {args.secret_env} is not set", file=sys.stderr)
            return 2
    try:
        if args.file == "-":
            body = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                body = f.read()
    except OSError as exc:
        print(f"relay send: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        headers = signed_headers(args.preset, secret, body, time.time(), event=args.event, delivery=args.delivery,
                                 signature_header=args.signature_header, prefix=args.signature_prefix,
                                 encoding=args.signature_encoding, content_type=args.content_type)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"relay send: -H {item!r}: expected 'Name: value'", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    return _run(lambda: send(args.url, args.route, body, headers))


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register tail, forward and send; each sets ``tool`` to its runner."""
    from .core.verify import SCHEMES

    def subscriber_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", metavar="URL", help="the relay, e.g. http://127.0.0.1:8080")
        p.add_argument("channel", metavar="CHANNEL", help="a channel, a pattern (github.*, *), or several, comma-separated")
        p.add_argument("--since", metavar="ID", help="start after this event id ('' for the whole stored log)")
        p.add_argument("--token", help="subscriber token or JWT (default: $RELAY_TOKEN)")
        p.add_argument("-n", "--count", type=int, metavar="N", help="stop after N events")

    p = commands.add_parser("tail", help="print events as they arrive",
                            description="Subscribe and print events: pretty on a terminal, one JSON line each "
                                        "when piped. Resumes by itself after a drop.")
    subscriber_args(p)
    p.add_argument("--format", choices=("auto", "pretty", "json"), default="auto",
                   help="auto: pretty on a terminal, JSON lines otherwise")
    p.set_defaults(tool=_cmd_tail)

    p = commands.add_parser("forward", help="re-POST events to a local URL",
                            description="Re-POST each event to a local URL with its forwarded headers and its body "
                                        "byte-exact, so the local app can check the sender's signature. Resumes by "
                                        "itself after a drop; prints one line per delivery.")
    subscriber_args(p)
    p.add_argument("--to", required=True, metavar="URL", help="where to POST, e.g. http://localhost:3000/hook")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the local app (default 30)")
    p.set_defaults(tool=_cmd_forward)

    p = commands.add_parser("send", help="sign a payload as a sender would and post it",
                            description="Sign FILE as the preset's sender would and POST it to /hooks/ROUTE. "
                                        "Exit 0 when the relay accepts it (2xx), 1 otherwise.")
    p.add_argument("url", metavar="URL", help="the relay, e.g. http://127.0.0.1:8080")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("file", metavar="FILE", help="the body to send, or - for stdin")
    p.add_argument("--preset", choices=SCHEMES, default="none", help="the sender to sign as (default none)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="the signing secret (visible to ps: prefer --secret-env)")
    secret.add_argument("--secret-env", metavar="VAR", help="read the signing secret from this environment variable")
    p.add_argument("--event", help="X-GitHub-Event (github, default push) or X-Shopify-Topic (shopify)")
    p.add_argument("--delivery", metavar="ID", help="the delivery id (default: a fresh one)")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--signature-header", metavar="NAME", help="hmac-sha256: the header that carries the signature")
    p.add_argument("--signature-prefix", default="", metavar="TEXT", help="hmac-sha256: e.g. sha256=")
    p.add_argument("--signature-encoding", choices=("hex", "base64"), default="hex")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="an extra header (repeatable)")
    p.set_defaults(tool=_cmd_send)
