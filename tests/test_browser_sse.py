"""SSE as browsers use it: a real EventSource in headless Chromium receives
events as they are posted, and resumes with Last-Event-ID after the relay
ends its stream."""

from __future__ import annotations

import json

from browser import browser_page, needs_chromium
from conftest import config_text, running_relay

pytestmark = needs_chromium

PAGE = """
window.got = []; window.opened = 0;
const source = new EventSource('/sse?channel=demo');
source.onopen = () => { window.opened += 1; };
source.onmessage = (e) => { window.got.push({lastEventId: e.lastEventId, data: JSON.parse(e.data)}); };
"""


async def test_an_eventsource_receives_events_and_resumes_after_the_stream_ends(http, tmp_path):
    async with running_relay(config_text()) as relay, browser_page(f"{relay.base}/healthz",
                                                                   tmp_path / "profile") as page:
        await page.js(PAGE)
        await page.until("window.opened === 1")
        first = (await http.post(f"{relay.base}/hooks/demo", json={"n": 1})).json()["id"]
        await page.until("window.got.length === 1")
        got = await page.js("window.got")
        assert got[0]["lastEventId"] == first
        assert got[0]["data"]["type"] == "event" and got[0]["data"]["data"] == {"n": 1}

        # The relay ends every SSE stream (as it does for a slow consumer);
        # the browser reconnects by itself with Last-Event-ID, and events
        # posted meanwhile arrive once, in order.
        for session in list(relay.app.sessions):
            session.sub.overflowed = True
            session.wake()
        missed = [(await http.post(f"{relay.base}/hooks/demo", json={"n": n})).json()["id"] for n in (2, 3)]
        await page.until("window.opened === 2")
        await page.until("window.got.length === 3")
        got = await page.js("window.got")
        assert [g["lastEventId"] for g in got] == [first, *missed]
        assert json.dumps([g["data"]["data"]["n"] for g in got]) == "[1, 2, 3]"
        # (the browser's own favicon request to /healthz's origin may 404)
        assert not [e for e in page.errors if "Failed to load resource" not in e], page.errors
