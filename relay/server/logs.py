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
import trio


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


# Lines wait at most this long (or for 64 KiB) before they are written.
FLUSH_S = 0.2
_FLUSH_BYTES = 64 * 1024


class BatchedHandler(logging.Handler):
    """Writes lines in batches: one write per FLUSH_S or 64 KiB rather than
    one per line. At level info a busy relay logs a line per webhook, and a
    write (with flush) per line cost about 10 µs of the webhook's budget.
    Warnings and errors go out at once, with every line that came before
    them; ``flush_every`` in the daemon writes what a quiet moment left, and
    logging's own exit hook flushes the rest."""

    def __init__(self, stream: object) -> None:
        super().__init__()
        self.stream = stream
        self.lines: list[str] = []
        self.size = 0
        self.since = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's own policy for a bad record
            self.handleError(record)
            return
        if not self.lines:
            self.since = record.created
        self.lines.append(line)
        self.size += len(line)
        if record.levelno >= logging.WARNING or self.size > _FLUSH_BYTES or record.created - self.since > FLUSH_S:
            self._write()

    def _write(self) -> None:
        if not self.lines:
            return
        text = "\n".join(self.lines) + "\n"
        self.lines.clear()
        self.size = 0
        try:
            self.stream.write(text)  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass  # stderr gone (a closed pipe): logging must never take the relay down

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()


def configure(level: str, fmt: str) -> None:
    # Where a call was made from is never printed: skip the frame walk.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


async def flush_every(interval: float = FLUSH_S) -> None:
    """The daemon's task that writes what the batched handler holds after a
    quiet moment, and once more when it ends."""
    try:
        while True:
            await trio.sleep(interval)
            flush()
    finally:
        flush()
