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
from ..core.wire import body_of, data_of, header  # noqa: F401 (the tools' names for them)
from .client import parse_url
from .subscriber import subscribe

_any = msgspec.json.Decoder()


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
