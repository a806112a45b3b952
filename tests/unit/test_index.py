"""The hub's rules without its task (``relay.core.index``): which subscribers
get an event, how a batch is cut into runs, and what each subscriber is
handed - checked with recording subscribers, no socket, no event loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.core.channels import matches
from relay.core.envelope import Event
from relay.core.index import _CACHE_LIMIT, RUN_BYTES, RUN_EVENTS, Index, Joined


def event(n: int, channel: str = "c", size: int = 10) -> Event:
    envelope = b'{"n":%d,"pad":"%s"}' % (n, b"x" * size)
    return Event(str(n), n, channel, n, envelope)


class Recorder:
    """A subscriber that remembers what the index handed it, and how."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.calls: list[tuple[str, list[str], bytes | None]] = []

    def offer(self, e: Event) -> None:
        self.calls.append(("offer", [e.id], None))

    def offer_many(self, events, joined) -> None:
        self.calls.append(("offer_many", [e.id for e in events], joined.frames("ws")))

    @property
    def ids(self) -> list[str]:
        return [i for _, ids, _ in self.calls for i in ids]

    def __repr__(self) -> str:
        return f"Recorder({self.name})"


def fan_out_all(index: Index, batch: list[Event]) -> list[list[str]]:
    """What the hub's flusher does with one batch; the runs it cut."""
    runs = []
    start = 0
    while start < len(batch):
        end = index.cut(batch, start)
        assert end > start
        index.fan_out(batch[start:end])
        runs.append([e.id for e in batch[start:end]])
        start = end
    return runs


def test_a_channel_goes_to_its_exact_prefix_and_catch_all_subscribers_once_each():
    index = Index()
    exact, prefix, everything, other = Recorder("exact"), Recorder("prefix"), Recorder("all"), Recorder("other")
    index.add(exact, "github.push")
    index.add(prefix, "github.*")
    index.add(prefix, "github.push")  # two patterns, still one copy
    index.add(everything, "*")
    index.add(other, "stripe.*")
    assert set(index.targets("github.push")) == {exact, prefix, everything}
    assert len(index.targets("github.push")) == 3
    assert set(index.targets("github.issues")) == {prefix, everything}
    assert index.targets("stripe.charge") == (other, everything)
    assert index.subscriber_count("gitlab") == 1


def test_targets_follow_subscriptions_as_they_change():
    index = Index()
    sub = Recorder()
    assert index.targets("a.b") == ()
    index.add(sub, "a.*")
    assert index.targets("a.b") == (sub,)  # the cached empty answer was dropped
    index.remove(sub, ["a.*"])
    assert index.targets("a.b") == ()
    index.add(sub, "*")
    index.discard(sub, "*")
    assert index.targets("a.b") == ()


@given(subs=st.lists(st.lists(st.sampled_from(["a", "a.b", "a.*", "a.b.*", "b.*", "*"]), max_size=3), max_size=4),
       channel=st.sampled_from(["a", "a.b", "a.b.c", "b", "b.x", "ab"]))
def test_targets_agree_with_the_one_definition_of_a_match(subs, channel):
    index = Index()
    recorders = []
    for patterns in subs:
        sub = Recorder()
        recorders.append(sub)
        for pattern in patterns:
            index.add(sub, pattern)
    wanted = {sub for sub, patterns in zip(recorders, subs) if any(matches(p, channel) for p in patterns)}
    assert set(index.targets(channel)) == wanted
    assert len(index.targets(channel)) == len(wanted)


def test_a_run_ends_where_the_targets_change():
    index = Index()
    a, b = Recorder("a"), Recorder("b")
    index.add(a, "a")
    index.add(b, "b")
    batch = [event(1, "a"), event(2, "a"), event(3, "b"), event(4, "a"), event(5, "a"), event(6, "a")]
    assert fan_out_all(index, batch) == [["1", "2"], ["3"], ["4", "5", "6"]]
    assert a.ids == ["1", "2", "4", "5", "6"] and b.ids == ["3"]


def test_a_run_is_at_most_run_events_long_and_about_run_bytes_large():
    index = Index()
    sub = Recorder()
    index.add(sub, "c")
    runs = fan_out_all(index, [event(n) for n in range(1, 2 * RUN_EVENTS + 2)])
    assert [len(r) for r in runs] == [RUN_EVENTS, RUN_EVENTS, 1]
    # Each envelope a little over a third of RUN_BYTES: a run takes another
    # event while it is under RUN_BYTES, so the third one, which crosses it,
    # is its last.
    runs = fan_out_all(index, [event(n, size=RUN_BYTES // 3) for n in range(1, 8)])
    assert [len(r) for r in runs] == [3, 3, 1]
    assert sub.ids == [str(n) for n in range(1, 2 * RUN_EVENTS + 2)] + [str(n) for n in range(1, 8)]


def test_a_run_of_many_is_offered_once_with_its_frames_joined_and_a_run_of_one_singly():
    index = Index()
    sub = Recorder()
    index.add(sub, "c")
    batch = [event(1), event(2), event(3), event(4, "d")]
    fan_out_all(index, batch)
    assert sub.calls == [("offer_many", ["1", "2", "3"], b"".join(e.ws_frame for e in batch[:3]))]
    index.add(sub, "d")
    fan_out_all(index, [event(5, "d")])
    assert sub.calls[-1] == ("offer", ["5"], None)


def test_the_joined_frames_are_built_once_per_transport():
    run = [event(1), event(2)]
    joined = Joined(run)
    ws, sse = joined.frames("ws"), joined.frames("sse")
    assert ws == run[0].ws_frame + run[1].ws_frame and sse == run[0].sse_chunk + run[1].sse_chunk
    assert joined.frames("ws") is ws and joined.frames("sse") is sse


def test_fan_out_moves_the_head_counts_channels_and_reports_only_events_someone_got():
    index = Index()
    reported: list[str] = []
    index.on_published = lambda e: reported.append(e.id)
    sub = Recorder()
    index.add(sub, "wanted")
    fan_out_all(index, [event(1, "wanted"), event(2, "unwanted"), event(3, "wanted")])
    assert index.head == "3" and index.published == 3
    assert reported == ["1", "3"]
    assert {name: (s.events, s.last_id) for name, s in index.channels.items()} == {
        "wanted": (2, "3"), "unwanted": (1, "2")}


def test_the_channel_table_stays_bounded_whatever_channels_payloads_name():
    index = Index()
    fan_out_all(index, [event(n, f"ch.{n}") for n in range(1, _CACHE_LIMIT + 51)])
    assert len(index.channels) == _CACHE_LIMIT
    assert f"ch.{_CACHE_LIMIT + 50}" in index.channels and "ch.1" not in index.channels
