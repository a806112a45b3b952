"""The relay's HTTP/1.1 parser, held to llhttp's request corpus (Node's
parser, strict mode) as a second oracle beside h11.

``llhttp_requests.json`` holds the corpus's cases as facts: the raw bytes and
what llhttp made of them (``llhttp_extract.py`` says where they come from).
For every case:

- where llhttp refuses, the relay refuses (or stops reading HTTP on that
  connection before the bytes llhttp refused, as after ``Connection: close``),
  at the latest once the line llhttp refused has ended;
- where llhttp reads a request, the relay refuses or reads the same method,
  target and body, and ends it at the same byte, so the next request starts
  where llhttp's does;
- where h11 and llhttp both read a request but frame it differently, the
  relay refuses: one of them is what a proxy in front of it would do.

The relay refuses an HTTP/1.1 request without a Host header, and most of
the corpus has none. So each such case also runs with a Host header line
added after its request line: a whole header line where a header line may
start changes nothing about how llhttp frames the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from relay.core import http1

CORPUS = json.loads(Path(__file__).with_name("llhttp_requests.json").read_text())
HOST = b"Host: llhttp.test\r\n"


@dataclass
class Message:
    method: str
    target: str
    start: int
    body: bytes = b""
    end: int | None = None  # None: the input ended inside it


@dataclass
class Reading:
    messages: list[Message] = field(default_factory=list)
    outcome: str = ""  # "refused", "closed" (no more HTTP on this connection), "need_data", "eof"
    detail: str = ""

    def complete(self) -> list[Message]:
        return [m for m in self.messages if m.end is not None]


def ours(raw: bytes, eof: bool) -> Reading:
    """What the relay's parser reads from ``raw``, answering each request as
    the shell does so that the next one may be read."""
    conn = http1.Connection()
    conn.receive_data(raw)
    if eof:
        conn.receive_data(b"")
    reading = Reading()
    while True:
        at = len(raw) - len(conn.trailing_data)
        try:
            event = conn.next_event()
        except http1.ProtocolError as exc:
            reading.outcome, reading.detail = "refused", exc.detail
            return reading
        if event is http1.NEED_DATA:
            reading.outcome = "need_data"
            return reading
        if event is http1.CONNECTION_CLOSED:
            reading.outcome = "eof"
            return reading
        if isinstance(event, http1.Request):
            start = at + len(raw[at:]) - len(raw[at:].lstrip(b"\r\n"))
            reading.messages.append(Message(event.method, event.target, start))
        elif isinstance(event, http1.Data):
            reading.messages[-1].body += event.data
        else:
            reading.messages[-1].end = len(raw) - len(conn.trailing_data)
            if conn.upgrade or not conn.keep_alive:
                reading.outcome = "closed"  # answered, and then the connection ends (or is switched)
                return reading
            conn.respond(200, [("content-length", "0")])
            conn.start_next_cycle()


def h11_reads(raw: bytes, eof: bool) -> list[Message]:
    """The requests h11 reads whole from ``raw`` before it stops or refuses."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    if eof:
        conn.receive_data(b"")
    messages: list[Message] = []
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                messages.append(Message(event.method.decode("latin-1"), event.target.decode("latin-1"), -1))
            elif isinstance(event, h11.Data):
                messages[-1].body += event.data
            elif isinstance(event, h11.EndOfMessage):
                messages[-1].end = len(raw) - len(conn.trailing_data[0])
                if conn.our_state is not h11.SEND_RESPONSE:
                    break  # h11 switched protocols or paused
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            else:
                break  # NEED_DATA, PAUSED, ConnectionClosed
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        pass
    return [m for m in messages if m.end is not None]


@dataclass
class Case:
    name: str
    raw: bytes
    eof: bool
    error: dict | None
    messages: list[dict]


def with_host(case: dict) -> Case | None:
    """The case with a Host header added to every message that has none, and
    llhttp's offsets moved to match; None when no message lacks one."""
    raw = case["raw"].encode("latin-1")
    shift = 0
    out = raw
    messages = []
    error = case["error"]
    added = False
    for message in case["messages"]:
        m = dict(message)
        start = m["start"]
        line_end = raw.find(b"\r\n", start)
        next_message = min([n["start"] for n in case["messages"] if n["start"] > start], default=len(raw))
        head = raw[start:next_message].split(b"\r\n\r\n", 1)[0].lower()
        needs = (line_end >= 0 and raw[line_end + 2:line_end + 3] not in (b" ", b"\t")
                 and b"\nhost:" not in head)
        m["start"] += shift
        if needs:
            at = line_end + 2 + shift
            out = out[:at] + HOST + out[at:]
            shift += len(HOST)
            added = True
            if error is not None and error["offset"] >= line_end + 2:
                error = {**error, "offset": error["offset"] + len(HOST)}
        if m["end"] is not None:
            m["end"] += shift
        messages.append(m)
    if not added:
        return None
    return Case(f"{case['file']}:{case['line']} {case['name']} (+Host)", out, case["eof"], error, messages)


def as_is(case: dict) -> Case:
    return Case(f"{case['file']}:{case['line']} {case['name']}", case["raw"].encode("latin-1"), case["eof"],
                case["error"], case["messages"])


CASES = [c for raw_case in CORPUS["cases"] for c in (as_is(raw_case), with_host(raw_case)) if c is not None]


def framing(m: Message | dict) -> tuple:
    if isinstance(m, dict):
        return m["method"], m["target"], m["body"].encode("latin-1"), m["end"]
    return m.method, m.target, m.body, m.end


def test_the_corpus_is_llhttps_request_suite_at_a_known_commit():
    assert CORPUS["source"] == "https://github.com/nodejs/llhttp" and len(CORPUS["commit"]) == 40
    assert len(CORPUS["cases"]) > 100
    assert sum(c["error"] is not None for c in CORPUS["cases"]) > 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_relay_refuses_what_llhttp_refuses_and_frames_the_rest_as_llhttp_does(case: Case):
    reading = ours(case.raw, case.eof)
    theirs = [m for m in case.messages if m["end"] is not None]
    for i, mine in enumerate(reading.complete()):
        assert i < len(theirs), f"read a request llhttp never finished: {mine} ({reading.outcome})"
        assert framing(mine) == framing(theirs[i]), f"request {i} framed differently from llhttp"
        assert mine.start == case.messages[i]["start"], f"request {i} starts elsewhere than llhttp's"
        if case.messages[i]["upgrade"]:
            assert reading.outcome == "closed", "llhttp hands the rest to another protocol; the relay read on"
    if case.error is not None:
        if reading.outcome == "need_data" and b"\n" not in case.raw[case.error["offset"]:]:
            # llhttp refused inside a line that has not ended yet; the relay
            # judges a line once it has all of it.
            reading = ours(case.raw + b"\r\n", case.eof)
        assert reading.outcome in ("refused", "closed"), f"llhttp refuses ({case.error['reason']}); relay: {reading}"
        return
    if reading.outcome in ("need_data", "eof"):
        # The input ended and llhttp took it: the relay must have finished the
        # same requests and, inside an unfinished one, be reading the same.
        assert len(reading.complete()) == len(theirs), "llhttp finished a request the relay still reads"
        partial = [m for m in reading.messages if m.end is None]
        if partial:
            expected = case.messages[len(theirs)]
            assert (partial[0].method, partial[0].target) == (expected["method"], expected["target"])
            assert partial[0].body == expected["body"].encode("latin-1")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_where_h11_and_llhttp_frame_a_request_differently_the_relay_refuses_it(case: Case):
    theirs = [m for m in case.messages if m["end"] is not None]
    h11s = h11_reads(case.raw, case.eof)
    first_difference = next((i for i, (a, b) in enumerate(zip(h11s, theirs)) if framing(a) != framing(b)), None)
    if first_difference is None:
        return
    reading = ours(case.raw, case.eof)
    assert len(reading.complete()) <= first_difference, (
        f"h11 and llhttp disagree on request {first_difference}; the relay read it as "
        f"{reading.complete()[first_difference]}")
