"""The Redis engine's pure half: stream ids and what a stream entry stores.

An event id is the entry's stream id, ``"<ms>-<seq>"``, ordered by time then
sequence. An entry stores the envelope without its opening and id (Redis
picks the id inside the append script), and the envelope is rebuilt by
concatenation, never re-encoded. No Redis client here: these are tested
alone (``tests/unit/test_redis_ids.py``).
"""

from __future__ import annotations

from ..core.envelope import Draft, encode_envelope

_ID_HEAD = b'{"type":"event","id":'
_U64 = 2**64

StreamKey = tuple[int, int]


def parse_stream_id(event_id: str) -> StreamKey:
    """``"<ms>-<seq>"`` -> (ms, seq); "" is the start of the log."""
    if event_id == "":
        return (0, 0)
    ms, sep, seq = event_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(ms) > 20 or len(seq) > 20:
        raise ValueError(f"{event_id[:40]!r} is not an event id of this relay (expected <ms>-<seq>)")
    key = (int(ms), int(seq))
    if key[0] >= _U64 or key[1] >= _U64:
        raise ValueError(f"{event_id[:40]!r} is not an event id of this relay (out of range)")
    return key


def format_stream_id(key: StreamKey) -> str:
    return f"{key[0]}-{key[1]}"


def envelope_rest(draft: Draft) -> bytes:
    """The envelope without its opening and id: what the stream stores.

    The id is the stream id, which Redis picks inside the script; storing the
    rest lets the script stay a plain XADD and the envelope be rebuilt by
    concatenation, never re-encoded.
    """
    template = encode_envelope(draft, "")
    head = _ID_HEAD + b'""'
    if not template.startswith(head):  # the Envelope struct changed shape
        raise AssertionError("the envelope no longer starts with its type and id")
    return template[len(head):]


def chunks(drafts: list[Draft], most: int, size: int) -> list[list[Draft]]:
    """Consecutive runs of at most ``most`` drafts and about ``size`` bytes."""
    out: list[list[Draft]] = [[]]
    total = 0
    for draft in drafts:
        if out[-1] and (len(out[-1]) >= most or total + len(draft.data) > size):
            out.append([])
            total = 0
        out[-1].append(draft)
        total += len(draft.data)
    return out if out[0] else []


def join_envelope(event_id: str, rest: bytes) -> bytes:
    return _ID_HEAD + b'"' + event_id.encode() + b'"' + rest
