"""A page on another origin, as in a dashboard served apart from the relay:
headless Chromium loads it from a second HTTP server on another port, and
its EventSource on the relay's /sse (credentials on, resuming with
Last-Event-ID) and its fetch of an admin view (with Authorization, so
preflighted) work when that origin is in ``auth.origins``, and are refused
by the browser when it is not."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from browser import browser_page, needs_chromium
from conftest import config_text, running_relay

pytestmark = needs_chromium

HTML = b"<!doctype html><title>dashboard</title><p>a page on its own origin</p>"


@asynccontextmanager
async def page_server():
    """A second origin: a tiny HTTP server on its own port serving one page."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
            # The page at /page; an empty answer to anything else (the favicon).
            body = HTML if head.startswith(b"GET /page ") else b""
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n"
                                  b"connection: close\r\n\r\n%s" % (len(body), body))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


def subscribe(relay_base: str) -> str:
    return f"""
window.got = []; window.opened = 0; window.failed = 0;
window.source = new EventSource({json.dumps(relay_base + '/sse?channel=demo')}, {{withCredentials: true}});
source.onopen = () => {{ window.opened += 1; }};
source.onerror = () => {{ window.failed += 1; }};
source.onmessage = (e) => {{ window.got.push({{lastEventId: e.lastEventId, data: JSON.parse(e.data)}}); }};
"""


def fetch_admin(relay_base: str) -> str:
    return f"""
fetch({json.dumps(relay_base + '/admin/channels')}, {{headers: {{Authorization: 'Bearer adm1n'}}, credentials: 'include'}})
  .then(r => r.json().then(body => ({{status: r.status, body}})), e => ({{blocked: String(e)}}))
"""


async def test_an_allowed_origins_page_streams_resumes_and_reads_the_admin_view(http, tmp_path):
    async with page_server() as origin:
        text = config_text(f'[auth]\norigins = ["{origin}"]\nadmin_token_env = "RELAY_ADMIN_TOKEN"\n')
        async with running_relay(text, env={"RELAY_ADMIN_TOKEN": "adm1n"}) as relay, \
                browser_page(f"{origin}/page", tmp_path / "profile") as page:
            assert await page.js("location.origin") == origin != relay.base
            await page.js(subscribe(relay.base))
            await page.until("window.opened === 1")
            first = (await http.post(f"{relay.base}/hooks/demo", json={"n": 1})).json()["id"]
            await page.until("window.got.length === 1")

            # The relay ends the stream; the browser comes back on its own,
            # cross-origin, with Last-Event-ID, and misses nothing.
            for session in list(relay.app.sessions):
                session.sub.overflowed = True
                session.wake()
            missed = [(await http.post(f"{relay.base}/hooks/demo", json={"n": n})).json()["id"] for n in (2, 3)]
            await page.until("window.opened === 2")
            await page.until("window.got.length === 3")
            got = await page.js("window.got")
            assert [g["lastEventId"] for g in got] == [first, *missed]
            assert [g["data"]["data"]["n"] for g in got] == [1, 2, 3]

            answer = await page.js(fetch_admin(relay.base))
            assert answer.get("status") == 200, answer
            assert [c["channel"] for c in answer["body"]["channels"]] == ["demo"]
            assert not page.errors, page.errors


@pytest.mark.parametrize("auth", ['[auth]\norigins = ["https://dash.example"]\n', ""],
                         ids=["another origin listed", "no origins list"])
async def test_a_page_of_an_origin_not_allowed_gets_nothing(http, tmp_path, auth):
    async with page_server() as origin, \
            running_relay(config_text(auth)) as relay, \
            browser_page(f"{origin}/page", tmp_path / "profile") as page:
        await page.js(subscribe(relay.base))
        await page.until("window.failed >= 1")
        # The browser gave up: no CORS answer, so no reconnecting either.
        assert await page.js("window.source.readyState") == 2  # CLOSED
        r = await http.post(f"{relay.base}/hooks/demo", json={"n": 1})
        assert r.status_code == 202
        answer = await page.js(fetch_admin(relay.base))
        assert "blocked" in answer, answer
        assert await page.js("window.opened") == 0 and await page.js("window.got.length") == 0
