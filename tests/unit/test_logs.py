"""The batched log handler: lines wait for one write, warnings never do."""

from __future__ import annotations

import io
import logging

from relay.server.logs import BatchedHandler, TextFormatter


def logger_writing_to(stream: io.StringIO) -> tuple[logging.Logger, BatchedHandler]:
    handler = BatchedHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger(f"relay.test.{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, handler


def test_info_lines_are_written_together_on_flush_in_order():
    stream = io.StringIO()
    log, handler = logger_writing_to(stream)
    for i in range(3):
        log.info("webhook %d", i)
    assert stream.getvalue() == ""  # waiting for one write
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["0", "1", "2"]


def test_a_warning_goes_out_at_once_with_the_lines_before_it():
    stream = io.StringIO()
    log, _ = logger_writing_to(stream)
    log.info("first")
    log.warning("store: lost Redis")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("first") and "WARNING" in lines[1]


def test_lines_older_than_the_flush_interval_go_out_with_the_next_one():
    stream = io.StringIO()
    log, _ = logger_writing_to(stream)
    old = log.makeRecord(log.name, logging.INFO, __file__, 1, "old", (), None)
    old.created -= 1.0
    log.handle(old)
    assert stream.getvalue() == ""
    log.info("new")
    assert stream.getvalue().splitlines()[-1].endswith("new")


def test_a_closed_stream_never_raises_into_the_relay():
    stream = io.StringIO()
    log, handler = logger_writing_to(stream)
    stream.close()
    log.warning("nobody reads this")
    handler.flush()
