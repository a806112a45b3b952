"""Where a webhook goes: channel templates, channel names and patterns.

Pure functions, and the one home of what a channel is: ``CHANNEL_RE``
(``[A-Za-z0-9_.:-]{1,200}``), ``parse_pattern`` (the one check of a
subscription: a channel, ``prefix.*`` or ``*``; the config, the JWT claims,
the CLI and both transports use it) and ``matches`` (the one definition of
which events a pattern selects; the hub's index agrees with it). A route's
channel template is compiled once at start; at ingest it is rendered from
the route name, the request headers and the parsed payload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import Invalid

_CHANNEL_CHARS = "A-Za-z0-9_.:-"
CHANNEL_RE = re.compile(rf"^[{_CHANNEL_CHARS}]{{1,200}}$")
_TEMPLATE_TEXT = re.compile(rf"[{_CHANNEL_CHARS}]*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Part:
    kind: str  # "text" | "route" | "header" | "json"
    value: str = ""
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[_Part, ...]
    needs_json: bool


def compile_template(source: str) -> Template:
    parts: list[_Part] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(source):
        if m.start() > pos:
            parts.append(_Part("text", source[pos : m.start()]))
        inner = m.group(1)
        kind, _, arg = inner.partition(":")
        if inner == "route":
            parts.append(_Part("route"))
        elif kind == "header" and arg:
            parts.append(_Part("header", arg.lower()))
        elif kind == "json" and arg and all(arg.split(".")):
            parts.append(_Part("json", arg, tuple(arg.split("."))))
        else:
            raise TemplateError(f"unknown placeholder {{{inner}}}; use {{route}}, {{header:Name}} or {{json:a.b}}")
        pos = m.end()
    rest = source[pos:]
    if "{" in rest or "}" in rest:
        raise TemplateError("unbalanced brace")
    if rest:
        parts.append(_Part("text", rest))
    for part in parts:
        if part.kind == "text" and not _TEMPLATE_TEXT.fullmatch(part.value):
            raise TemplateError(f"{part.value!r} has characters a channel name cannot hold")
    return Template(source, tuple(parts), any(p.kind == "json" for p in parts))


def _json_value(payload: Any, part: _Part) -> str:
    node = payload
    walked = "$"
    for key in part.path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise Invalid(f"channel template {{json:{part.value}}}: {walked}.{key} is missing")
        walked += f".{key}"
    if isinstance(node, bool) or not isinstance(node, (str, int)):
        raise Invalid(f"channel template {{json:{part.value}}}: {walked} is not a string or integer")
    return str(node)


def render(template: Template, route: str, headers: Mapping[str, str], payload: Any = None) -> str:
    """The channel of one webhook. ``headers`` has lower-cased names."""
    out: list[str] = []
    for part in template.parts:
        if part.kind == "text":
            out.append(part.value)
        elif part.kind == "route":
            out.append(route)
        elif part.kind == "header":
            value = headers.get(part.value)
            if value is None or value == "":
                raise Invalid(f"channel template {{header:{part.value}}}: header is missing")
            out.append(value)
        else:
            out.append(_json_value(payload, part))
    channel = "".join(out)
    if not CHANNEL_RE.match(channel):
        raise Invalid(f"channel template {template.source!r} gave {channel[:210]!r}, not a valid channel name")
    return channel


def parse_pattern(text: str) -> str:
    """Check one subscription (a channel, ``prefix.*`` or ``*``); returns it."""
    if text == "*":
        return text
    name = text[:-2] if text.endswith(".*") else text
    if not CHANNEL_RE.match(name):
        raise ValueError(f"{text[:210]!r} is not a channel name or pattern")
    return text


def matches(pattern: str, channel: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return channel.startswith(pattern[:-1])
    return pattern == channel


def selects(patterns: Sequence[str], channel: str) -> bool:
    """Does one of ``patterns`` select ``channel``?"""
    return any(matches(p, channel) for p in patterns)
