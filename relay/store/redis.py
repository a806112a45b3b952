"""The cluster engine: one event log in a Redis stream, shared by every relay.

Keys, all under ``store.prefix``:

- ``<prefix>log``: the stream. An entry's stream id is the event id; its
  fields are ``c`` (channel), ``t`` (ingest ms) and ``e`` (the envelope's bytes
  after its id: the envelope is ``{"type":"event","id":"<stream id>"`` + ``e``).
- ``<prefix>pruned``: the newest id retention dropped, for gap detection.
- ``<prefix>dedupe:<delivery key>``: ``"<id> <channel>"`` of the delivery's
  first event, expiring after ``retention_age``.
- ``<prefix>ready``: written (and expiring) by each readiness check, which
  must be a write to mean anything.
- ``<prefix>epoch``: a token written with the log's first entry. A Redis that
  comes back without its data has none, which is how a loss is told from a
  log that merely grew (new ids are later ones either way).

Writes: one writer task drains every pending append into one call of a Lua
script (the same group commit as the sqlite engine), so webhooks that wait at
the same moment cost one round trip, and ``append`` returns once Redis has
answered. The script checks dedupe, XADDs with an id Redis picks (``*``),
trims by count and age, and returns the ids.

Reads: one tail task per relay follows the stream (XREAD BLOCK from the last
id it delivered) and is the only caller of ``publish``, so every relay hands
its hub the same events in the same order, whichever relay took the webhook.
Resumes read with XRANGE inside a script that also returns the pruned mark
and the newest id, so a trim never slips between them. When Redis goes away, appends fail with
``StoreUnavailable`` (503), ``ping`` is false, and the tail retries with
backoff and carries on after the last id it delivered: nothing stored is
skipped.

Durability is Redis's: a 202 means Redis answered the write, and what
survives a Redis crash depends on its persistence (``appendonly yes`` with
``appendfsync always`` keeps every acknowledged event; ``everysec`` may lose
the last second). Requires Redis 6.2 or newer (exclusive XRANGE); tested on
7.0. coredis runs on trio through anyio: no asyncio bridge.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence

import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from ..config.files import redacted
from ..config.model import StoreConfig
from ..core.channels import selects
from ..core.envelope import Draft, Event
from ..core.errors import StoreUnavailable
from ..core.outbox import Page
from .base import Appended, Store
from .redis_deliveries import RedisDeliveryLog
from .commit import GroupCommit
from .redis_ids import StreamKey, chunks, envelope_rest, format_stream_id, join_envelope, parse_stream_id

log = logging.getLogger("relay.store")

# What a call to Redis raises when Redis is away, slow or refuses.
_FAILURES = (RedisError, OSError, trio.TooSlowError)

# Lua runs atomically, so dedupe, XADD and trimming of a whole batch see one
# state of the log, whatever the other relays do. The id comes from XADD *:
# Redis keeps ids strictly increasing across all writers, so relays never
# collide or go backwards (ids the relay picked itself would need a clock
# agreement between relays). The envelope is built from the returned id.
#
# Retention trims here rather than with XADD's MAXLEN ~ because a resume must
# learn exactly which ids are gone (Redis records no trimmed id: its
# max-deleted-entry-id counts XDEL only): the script drops whole runs up to a
# last dropped id and records it in <prefix>pruned. Count retention waits
# for ``slack`` extra entries, so a trim is one scan of at least that many
# rather than one per webhook; age retention finds its last victim with one
# XREVRANGE. Age is on the server's clock, the clock the ids are made of.
#
# The log's epoch: a token the first append writes beside the stream. A
# Redis that comes back without its data has neither; the first append then
# learns that everything up to what its relay had delivered is gone, and
# raises the pruned mark to there, so a resume from before the loss gets its
# gap even when no relay's tail has noticed yet.
#
# KEYS[1] the stream, KEYS[2] the pruned mark, KEYS[3] the epoch, KEYS[4..]
#   dedupe keys.
# ARGV: maxlen, slack, dedupe window ms, a fresh epoch token, the newest id
#   the relay delivered ("0-0" for none), then per draft: channel, ts, rest,
#   k (index of its dedupe key in KEYS, 0 for none).
# Returns the epoch, then per draft: the new id, or "=<first id> <channel>"
# for a duplicate.
_APPEND_LUA = """
local stream, mark = KEYS[1], KEYS[2]
local maxlen, slack, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function later(a, b)
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  return ams > bms or (ams == bms and aseq > bseq)
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  if redis.call('EXISTS', stream) == 0 and ARGV[5] ~= '0-0' then
    local known = redis.call('GET', mark) or '0-0'
    if later(ARGV[5], known) then redis.call('SET', mark, ARGV[5]) end
  end
  redis.call('SET', KEYS[3], epoch)
end
local out = {epoch}
local last = nil
for i = 6, #ARGV, 4 do
  local channel, ts, rest, k = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local first = false
  if k > 0 then first = redis.call('GET', KEYS[k]) end
  if first then
    out[#out + 1] = '=' .. first
  else
    local id = redis.call('XADD', stream, '*', 'c', channel, 't', ts, 'e', rest)
    if k > 0 then redis.call('SET', KEYS[k], id .. ' ' .. channel, 'PX', window) end
    out[#out + 1] = id
    last = id
  end
end
if not last then return out end

local dropped, dms, dseq = nil, 0, 0
local excess = redis.call('XLEN', stream) - maxlen
if excess >= slack then
  -- The newest entry to drop, counted from whichever end is nearer.
  local run
  if excess <= maxlen then
    run = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
  else
    run = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', maxlen + 1)
  end
  dropped = run[#run][1]
  dms, dseq = split(dropped)
end
local cutoff = split(last) - window
-- Look for the newest aged entry only when the oldest one has aged: a
-- reverse range that starts below every entry makes Redis walk the whole
-- stream back from its end (13 ms at 50,000 entries, on every commit).
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if cutoff > 0 and #oldest > 0 and split(oldest[1][1]) < cutoff then
  local aged = redis.call('XREVRANGE', stream, '(' .. string.format('%.0f', cutoff) .. '-0', '-', 'COUNT', 1)
  if #aged > 0 then
    local ams, aseq = split(aged[1][1])
    if ams > dms or (ams == dms and aseq > dseq) then dropped, dms, dseq = aged[1][1], ams, aseq end
  end
end
if dropped then
  redis.call('XTRIM', stream, 'MINID', string.format('%.0f-%.0f', dms, dseq + 1))
  local known = redis.call('GET', mark) or '0-0'
  if later(dropped, known) then redis.call('SET', mark, dropped) end
end
return out
"""

# {last-generated-id or "" while the stream is absent, the pruned mark, the
# epoch or ""}. KEYS: the stream, the mark, the epoch.
_STATE_LUA = """
local pruned = redis.call('GET', KEYS[2]) or '0-0'
local epoch = redis.call('GET', KEYS[3]) or ''
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if info.err then return {'', pruned, epoch} end
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {info[i + 1], pruned, epoch} end
end
return {'', pruned, epoch}
"""

# A resume's read: entries after ARGV[1] (exclusive, "(<id>"), at most
# ARGV[2] of them, with the state of the log at that moment: {the pruned
# mark, last-generated-id or "", entries}. One script, so no trim slips
# between the entries and the mark.
_READ_LUA = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local pruned = redis.call('GET', KEYS[2]) or '0-0'
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
local last = ''
if not info.err then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {pruned, last, entries}
"""

# Raise the pruned mark to ARGV[1] unless it is there already: a relay that
# finds the log behind what it delivered records the loss for every relay.
_RAISE_MARK_LUA = """
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local known = redis.call('GET', KEYS[1]) or '0-0'
local kms, kseq = split(known)
local ms, seq = split(ARGV[1])
if ms > kms or (ms == kms and seq > kseq) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# Count retention trims once this many entries are over it.
_TRIM_SLACK = 100
# Drafts and body bytes per script call: keeps one call short, since Redis
# runs nothing else meanwhile.
_SCRIPT_DRAFTS = 500
_SCRIPT_BYTES = 8 << 20
# Seconds an append, a read or a ping may take before Redis counts as gone.
_CALL_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0
# The tail's XREAD blocks this long (ms) before asking again; a silent, dead
# connection is noticed after this plus _CALL_TIMEOUT.
_BLOCK_MS = 10_000
_TAIL_COUNT = 1000
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
# The readiness probe's key lives this long (ms).
_PROBE_TTL_MS = 10_000
# Entries scanned per XRANGE while filtering channels for a resume.
_READ_PAGE = 1000


class RedisStore(Store):
    def __init__(self, config: StoreConfig, publish: Callable[[list[Event]], None]) -> None:
        self.config = config
        self.publish = publish
        self.stream = config.prefix + "log"
        self.mark = config.prefix + "pruned"
        self.epoch_key = config.prefix + "epoch"
        self.probe_key = config.prefix + "ready"
        self.where = redacted(config.url)
        self._client: coredis.Redis | None = None  # appends, reads and pings
        self.deliveries = RedisDeliveryLog(lambda: self._client, config.prefix, self.where, _FAILURES)
        self._queue = GroupCommit()
        self._running = False
        self._stopped = trio.Event()
        self._position: StreamKey = (0, 0)  # last id the tail delivered
        self._from_log = False  # _position is an id the log had (not a clock reading)
        self._head = ""
        self._pruned: StreamKey = (0, 0)  # newest id retention dropped
        self._tail_ok = False
        self._epoch: str | None = None  # the log's epoch, once seen
        self._token = secrets.token_hex(8)  # the epoch this relay writes if the log has none
        self._loss: StreamKey | None = None  # a loss up to here the tail must record in Redis
        self._poke = trio.Event()  # Redis answered someone: the tail may stop waiting
        self._moved = trio.lowlevel.ParkingLot()  # the tail delivered more
        # Receipt times of this relay's own events, for delivery latency;
        # the tail takes them back when it publishes.
        self._received: dict[str, float] = {}
        self.round_trips = 0  # script calls, for tests and metrics

    # -- state -----------------------------------------------------------

    @property
    def head(self) -> str:
        return self._head

    def parse_id(self, event_id: str) -> StreamKey:
        return parse_stream_id(event_id)

    def lost_after(self, key: object) -> bool:
        # Kept current by the tail (it reads the pruned mark with every
        # XREAD). A trim made by another relay's append is known here once
        # the tail has read that append, i.e. within the tail's latency.
        return self._pruned > key  # type: ignore[operator]

    # -- lifecycle -------------------------------------------------------

    def _connect(self) -> coredis.Redis:
        # No retries inside the client: a script whose reply was lost may
        # have run, and the writer must not run it twice on its own.
        return coredis.Redis.from_url(self.config.url, retry_policy=NoRetryPolicy(),
                                      connect_timeout=_CONNECT_TIMEOUT)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        # coredis logs every lost connection with a traceback at INFO; the
        # relay says it once, in its own words.
        logging.getLogger("coredis").setLevel(logging.WARNING)
        client, tail_client = self._connect(), self._connect()
        # The tail's blocking XREAD gets a pool (and connection) of its own,
        # so appends never queue behind it.
        async with client, tail_client:
            self._client = client
            self._append = client.register_script(_APPEND_LUA)
            # Unreachable at start: serve anyway, not ready (/readyz 503,
            # webhooks 503), and let the tail connect when Redis answers. A
            # relay of a cluster must ride out a Redis restart the same way
            # whether it started before or during it, and an orchestrator
            # reads /readyz rather than exit codes.
            try:
                with trio.fail_after(_CONNECT_TIMEOUT + 1):
                    state = await client.eval(_STATE_LUA, self._state_keys, [])
                self._start_from(state)
                self._tail_ok = True
            except _FAILURES as exc:
                # Where the log stood is unknown: follow it from this
                # moment (ids are Redis's clock in ms), so subscribers who
                # connect meanwhile get what other relays store after it.
                self._position = (int(time.time() * 1000), 0)
                log.warning(f"store: cannot reach Redis at {self.where} ({exc}); serving, but not ready "
                            "(/readyz 503, webhooks 503) until it answers")
            self._running = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tail, tail_client)
                task_status.started()
                try:
                    await self._write_loop()
                finally:
                    self._running = False
                    self._stopped.set()
                    self._queue.fail_pending("the relay is shutting down")
                    nursery.cancel_scope.cancel()
            self._client = None

    @property
    def _state_keys(self) -> list[str]:
        return [self.stream, self.mark, self.epoch_key]

    def _start_from(self, state: list) -> None:
        last, pruned = state[0].decode(), parse_stream_id(state[1].decode())
        if last:
            self._position = parse_stream_id(last)
            self._head = last if self._position != (0, 0) else ""
        self._from_log = True
        self._pruned = max(self._pruned, pruned)
        self._epoch = state[2].decode() or None

    def _lost_up_to(self, key: StreamKey, why: str) -> None:
        """The log no longer has what this relay delivered up to ``key``:
        resumes from before it get a gap, here and (once the tail has written
        the mark) on every relay."""
        if key <= (0, 0) or self._pruned >= key:
            return
        log.warning(f"store: Redis at {self.where} lost the log up to {format_stream_id(key)} ({why}); "
                    "resumes from before it get a gap")
        self._pruned = key
        self._loss = key
        self._poke.set()

    async def close(self) -> None:
        """Store what is pending, then let ``run`` end."""
        self._queue.close()
        if self._running:
            await self._stopped.wait()

    # -- writes ----------------------------------------------------------

    async def _write_loop(self) -> None:
        while (batch := await self._queue.next()) is not None:
            try:
                for chunk in chunks(batch.drafts, _SCRIPT_DRAFTS, _SCRIPT_BYTES):
                    batch.results += await self._commit(chunk)
            except _FAILURES as exc:
                # Some drafts of the batch may be stored; none is acknowledged.
                # A sender's retry is deduped when it names its delivery.
                why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc) or type(exc).__name__
                batch.error = StoreUnavailable(f"the event store (Redis at {self.where}) did not store the event: {why}")
                batch.results.clear()
            batch.done.set()

    async def _commit(self, drafts: list[Draft]) -> list[Appended]:
        keys: list[str] = [self.stream, self.mark, self.epoch_key]
        retention = self.config.retention
        known = format_stream_id(self._position) if self._from_log else "0-0"
        args: list[str | bytes | int] = [retention, min(retention, _TRIM_SLACK), int(self.config.retention_age * 1000),
                                         self._token, known]
        rests: list[bytes] = []
        for draft in drafts:
            rest = envelope_rest(draft)
            rests.append(rest)
            k = 0
            if draft.dedupe is not None:
                keys.append(self.config.prefix + "dedupe:" + draft.dedupe)
                k = len(keys)
            args += [draft.channel, draft.ts, rest, k]
        with trio.fail_after(_CALL_TIMEOUT):
            reply = await self._append(keys, args)
        self.round_trips += 1
        self._poke.set()
        self._note_epoch(reply[0].decode())
        out: list[Appended] = []
        for draft, rest, item in zip(drafts, rests, reply[1:]):
            text = item.decode()
            if text.startswith("="):
                first_id, _, channel = text[1:].partition(" ")
                out.append(Appended(Event(first_id, parse_stream_id(first_id), channel, 0, b""), True))
                continue
            key = parse_stream_id(text)
            out.append(Appended(Event(text, key, draft.channel, draft.ts, join_envelope(text, rest), draft.received), False))
            if key > self._position:  # not yet delivered by the tail
                if len(self._received) > 100_000:
                    self._received.clear()
                self._received[text] = draft.received
        return out

    async def append(self, drafts: Sequence[Draft]) -> list[Appended]:
        if self._queue.closing or not self._running:
            raise StoreUnavailable("the event store is not running")
        return await self._queue.join(drafts)

    # -- the tail --------------------------------------------------------

    async def _tail(self, client: coredis.Redis) -> None:
        delay = _BACKOFF_MIN
        while True:
            try:
                if not self._tail_ok:
                    # Reconnecting: a quick call first, so that readiness
                    # does not wait for a blocking read to come back.
                    with trio.fail_after(_CALL_TIMEOUT):
                        state = await client.eval(_STATE_LUA, self._state_keys, [])
                    self._note_state(state)
                    self._tail_ok = True
                    delay = _BACKOFF_MIN
                    log.info(f"store: Redis at {self.where} answers; following the log after "
                             f"{format_stream_id(self._position)}")
                with trio.fail_after(_BLOCK_MS / 1000 + _CALL_TIMEOUT):
                    # One round trip: Redis answers the script after the
                    # XREAD, so the prune mark is never older than the
                    # entries it comes with.
                    async with client.pipeline(transaction=False) as pipe:
                        read = pipe.xread({self.stream: format_stream_id(self._position)},
                                          count=_TAIL_COUNT, block=_BLOCK_MS)
                        info = pipe.eval(_STATE_LUA, self._state_keys, [])
                    got, state = await read, await info
                if self._loss is not None:
                    loss = self._loss
                    with trio.fail_after(_CALL_TIMEOUT):
                        await client.eval(_RAISE_MARK_LUA, [self.mark], [format_stream_id(loss)])
                    if self._loss == loss:
                        self._loss = None
            except _FAILURES as exc:
                if self._tail_ok:
                    log.warning(f"store: lost Redis at {self.where} ({exc or type(exc).__name__}); "
                                f"retrying, resuming after {format_stream_id(self._position)}")
                self._tail_ok = False
                self._poke = trio.Event()
                with trio.move_on_after(delay):
                    await self._poke.wait()
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            entries = got.get(self.stream.encode(), ()) if got else ()
            events = [self._event(entry, self._received.pop(entry.identifier.decode(), 0.0)) for entry in entries]
            self._note_state(state)
            if events:
                self._position = events[-1].key  # type: ignore[assignment]
                self._from_log = True
                self._head = events[-1].id
                self.publish(events)
                self._moved.unpark_all()

    @staticmethod
    def _event(entry, received: float = 0.0) -> Event:
        event_id = entry.identifier.decode()
        fields = entry.field_values
        return Event(event_id, parse_stream_id(event_id), fields[b"c"].decode(), int(fields[b"t"]),
                     join_envelope(event_id, fields[b"e"]), received)

    def _note_state(self, state: list) -> None:
        last = parse_stream_id(state[0].decode()) if state[0] else (0, 0)
        pruned = parse_stream_id(state[1].decode())
        self._pruned = max(self._pruned, pruned)
        self._note_epoch(state[2].decode())
        if self._from_log and last < self._position:
            # The log is behind what this relay delivered: Redis came back
            # without its data (no persistence) or the key was deleted.
            self._lost_up_to(self._position, "restarted without persistence?")

    def _note_epoch(self, epoch: str) -> None:
        if not epoch:
            return
        if self._epoch is not None and epoch != self._epoch and self._from_log:
            # A new epoch: the log was recreated since this relay last saw
            # it, whatever its ids say (new ids are later ones).
            self._lost_up_to(self._position, "its log was recreated: restarted without persistence?")
        self._epoch = epoch

    # -- reads -----------------------------------------------------------

    async def read_page(self, after: object, patterns: Sequence[str], limit: int) -> Page:
        client = self._client
        if client is None or not self._running:
            raise StoreUnavailable("the event store is not running")
        everything = "*" in patterns
        # One more than ``limit`` tells whether more follow.
        page = limit + 1 if everything else max(limit + 1, _READ_PAGE)
        start: StreamKey = after  # type: ignore[assignment]
        out: list[Event] = []
        reported: StreamKey | None = None  # the pruned mark the page reports
        more = False
        head: StreamKey = (0, 0)
        try:
            while True:
                with trio.fail_after(_CALL_TIMEOUT):
                    pruned_b, last_b, entries = await client.eval(
                        _READ_LUA, [self.stream, self.mark], ["(" + format_stream_id(start), page])
                pruned = max(parse_stream_id(pruned_b.decode()), self._pruned)
                head = parse_stream_id(last_b.decode()) if last_b else (0, 0)
                if reported is None or not out:
                    reported = pruned
                elif pruned > start:
                    # Retention dropped entries after the last chunk: the
                    # next read says so, after the events before the hole.
                    more = True
                    break
                for entry_id, fields in entries:
                    values = dict(zip(fields[::2], fields[1::2]))
                    channel = values[b"c"].decode()
                    if everything or selects(patterns, channel):
                        if len(out) >= limit:
                            more = True
                            break
                        event_id = entry_id.decode()
                        out.append(Event(event_id, parse_stream_id(event_id), channel, int(values[b"t"]),
                                         join_envelope(event_id, values[b"e"])))
                if more or len(entries) < page:
                    break
                start = parse_stream_id(entries[-1][0].decode())
        except _FAILURES as exc:
            raise StoreUnavailable(f"the event store (Redis at {self.where}) did not answer a read: "
                                   f"{exc or type(exc).__name__}") from None
        return Page(out, head, reported, more=more)

    @property
    def readable(self) -> bool:
        return self._running and self._tail_ok

    async def ping(self) -> bool:
        client = self._client
        if client is None or not self._running:
            return False
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                # A write, not a PING: a Redis out of memory (maxmemory with
                # noeviction) or refusing writes after a failed save answers
                # PING but stores nothing, and ready means a webhook would be
                # stored.
                await client.set(self.probe_key, self._token, px=_PROBE_TTL_MS)
        except _FAILURES:
            return False
        self._poke.set()
        # Ready means webhooks are stored and this relay's subscribers get
        # them: the tail must be following the log too.
        return self._tail_ok
