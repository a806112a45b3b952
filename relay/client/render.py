"""What ``relay tail`` prints, and the webhook's body as its sender posted it.

An event is printed pretty on a terminal (its id, channel, time, route and
delivery, its headers, its body laid out), or as one JSON line when piped:
the envelope verbatim, re-laid out only when the body spans lines, never
decoded (a number no float holds stays as sent). ``body_of`` finds the
envelope's ``data`` in the text exactly as stored, whitespace included,
since a signature covers those bytes too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO

import msgspec

from ..core import wire
from .client import parse_url
from .subscriber import subscribe

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
