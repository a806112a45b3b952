"""Log output: lines for people, or one JSON object per line for machines.

Structured fields travel in ``extra={"fields": {...}}``; the text format
prints them as ``key=value`` after the message. Secrets and payloads are never
passed as fields.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec


class TextFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its stamp

    def format(self, record: logging.LogRecord) -> str:
        # Busy relays log many lines a second: strftime once per second.
        second, stamp = self._second
        if second != int(record.created):
            second = int(record.created)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join([f"{k}={v}" for k, v in fields.items() if v is not None])
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(obj).decode()


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
