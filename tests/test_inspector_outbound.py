"""The inspector's "Outbound endpoints" panel in a real browser (headless
Chromium over the DevTools Protocol): an in-process relay sends webhooks to a
real receiver on loopback, and the page must show each endpoint's state and
its latest attempts, ask for the admin token when the admin API answers 401,
say how to add an endpoint when there is none, and show what a receiver
answered as text, never as markup.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import json
import re

import trio

from browser import browser_page, needs_chromium
from conftest import config_text, running_relay, until
from receiver import Receiver, Reply
from relay.core import whsec

pytestmark = needs_chromium

SECRET = whsec.make(bytes(range(32)))
RECENT = re.compile(r"\d\d:\d\d:\d\d \((just now|\d+ s ago)\)")  # a readable time, seconds ago
ADMIN = '[auth]\nadmin_token_env = "RELAY_ADMIN_TOKEN"\n'


def relay_config(url: str | None, extra: str = "") -> str:
    endpoint = f"""
[endpoints.x]
url = "{url}"
channels = ["pay.*"]
secret = "{SECRET}"
""" if url else ""
    return config_text(f"""
{extra}
[outbound]
allow_private = ["127.0.0.0/8"]
retry = [0, 600]
jitter = 0.0
timeout = 5.0
{endpoint}
""")


def row(endpoint_id: str) -> str:
    return f"document.querySelector('#endpoints tr[data-id={json.dumps(endpoint_id)}]')"


ROW_TEXT = """((r) => r && Object.fromEntries([...r.cells].map(td => [td.className.replace('num ', ''),
    td.textContent])))({row})"""
ATTEMPTS = """[...document.querySelectorAll('#attempts tbody tr')].map(r => Object.fromEntries(
    [...r.cells].map(td => [td.className.replace('num ', '').split(' ')[0], td.textContent])))"""


def visible(element_id: str) -> str:
    return f"!document.getElementById('{element_id}').hidden && !!document.getElementById('{element_id}').offsetParent"


async def test_the_panel_shows_an_endpoint_with_its_delivery_and_its_attempt(http, tmp_path):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(receiver.url)) as relay, \
                browser_page(f"{relay.base}/", tmp_path / "profile") as page:
            r = await http.post(f"{relay.base}/hooks/pay", json={"type": "charge"})
            event_id = r.json()["id"]
            await receiver.until(1)
            await page.until(f"{row('x')}?.querySelector('td.delivered')?.textContent === '1'")
            shown = await page.js(ROW_TEXT.format(row=row("x")))
            assert shown["id"] == "x config"
            assert shown["url"] == receiver.url and shown["channels"] == "pay.*"
            assert shown["state ok"] == "enabled"
            assert (shown["pending"], shown["in-flight"], shown["failed"]) == ("0", "0", "0")
            assert RECENT.fullmatch(shown["last-success"]), shown
            assert shown["last-failure"] == "never"
            assert "1 endpoint, updated" in await page.js("document.getElementById('outbound-status').textContent")

            # Its latest attempts, for the endpoint picked.
            assert await page.js(visible("attempts-box")) is False
            await page.js(f"{row('x')}.querySelector('button.pick').click()")
            await page.until(f"{ATTEMPTS}.length === 1")
            [attempt] = await page.js(ATTEMPTS)
            assert attempt["event-id"] == event_id and attempt["attempt"] == "1"
            assert attempt["outcome"] == "200" and attempt["response"] == "ok"
            assert attempt["duration"].endswith(" ms") and RECENT.fullmatch(attempt["at"])
            assert await page.js("document.getElementById('attempts-of').textContent") == "x"
            assert await page.js(f"{row('x')}.className") == "selected"

            # Refreshed while the page is open: a second delivery appears without a reload.
            await http.post(f"{relay.base}/hooks/pay", json={"type": "refund"})
            await page.until(f"{row('x')}?.querySelector('td.delivered')?.textContent === '2'")
            await page.until(f"{ATTEMPTS}.length === 2")
            assert not page.errors, page.errors
        nursery.cancel_scope.cancel()


async def test_the_panel_asks_for_the_admin_token_then_shows_the_endpoints(tmp_path):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(receiver.url, ADMIN), env={"RELAY_ADMIN_TOKEN": "let-me-in"}) as relay, \
                browser_page(f"{relay.base}/", tmp_path / "profile") as page:
            await page.until(visible("admin-form"))
            why = await page.js("document.getElementById('admin-why').textContent")
            assert "admin token" in why and "401" in why
            assert await page.js(visible("endpoints")) is False
            assert await page.js("document.getElementById('outbound-status').textContent") == "admin token needed"

            # A wrong token: refused, said so, asked again.
            await page.js("""(() => { document.getElementById('admin-token').value = 'guess';
                document.querySelector('#admin-form button[type=submit]').click(); })()""")
            await page.until("document.getElementById('admin-why').textContent.includes('refused')")
            assert await page.js(visible("admin-form"))
            assert await page.js("sessionStorage.getItem('relay.adminToken')") is None

            await page.js("""(() => { document.getElementById('admin-token').value = 'let-me-in';
                document.querySelector('#admin-form button[type=submit]').click(); })()""")
            await page.until(f"{row('x')}?.querySelector('td.url')?.textContent === {json.dumps(receiver.url)}")
            assert await page.js(visible("admin-form")) is False
            assert await page.js("document.getElementById('admin-token').value") == ""  # not left in the field
            # Kept for this tab only, never in the URL or localStorage.
            assert await page.js("sessionStorage.getItem('relay.adminToken')") == "let-me-in"
            assert await page.js("localStorage.length") == 0
            assert "let-me-in" not in await page.js("location.href")

            # A reload in the same tab keeps it: the endpoints show without asking.
            await page.js("window.beforeReload = 1")
            await page.call("Page.reload")
            await page.until("!window.beforeReload && document.readyState === 'complete'")
            await page.until(f"!!{row('x')}")
            assert await page.js(visible("admin-form")) is False

            # Forgotten: asked again.
            await page.js("document.getElementById('admin-forget').click()")
            await page.until(visible("admin-form"))
            assert await page.js("sessionStorage.getItem('relay.adminToken')") is None
            # The browser logs each 401 the page was answered; nothing else may fail.
            assert not [e for e in page.errors if "status of 401" not in e], page.errors
        nursery.cancel_scope.cancel()


async def test_with_no_endpoint_the_panel_says_so_and_how_to_add_one(tmp_path):
    async with running_relay(relay_config(None)) as relay, browser_page(f"{relay.base}/", tmp_path / "profile") as page:
        await page.until(visible("outbound-note"))
        note = await page.js("document.getElementById('outbound-note').textContent")
        assert "No outbound endpoints" in note
        assert "[endpoints.<id>]" in note
        assert f"curl -X POST '{relay.base}/admin/endpoints'" in note
        assert await page.js(visible("endpoints")) is False
        assert "0 endpoints" in await page.js("document.getElementById('outbound-status').textContent")
        assert not page.errors, page.errors


MARKUP = b'<img src=x onerror="window.pwned=1"><b>gone</b> for good'


async def test_what_a_receiver_answered_is_shown_as_text_not_markup(http, tmp_path):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(410, body=MARKUP)).serve)
        async with running_relay(relay_config(None)) as relay, \
                browser_page(f"{relay.base}/", tmp_path / "profile") as page:
            url = receiver.url + "?q=<b>x</b>"
            r = await http.post(f"{relay.base}/admin/endpoints", json={
                "id": "evil", "url": url, "channels": ["pay.*"], "secret": SECRET})
            assert r.status_code == 201, r.text
            await http.post(f"{relay.base}/hooks/pay", json={"type": "charge"})
            await receiver.until(1)
            await until(lambda: not relay.app.outbound.known["evil"].enabled)
            await page.until(f"{row('evil')}?.querySelector('td.state')?.textContent.startsWith('disabled: ')")
            await page.js(f"{row('evil')}.querySelector('button.pick').click()")
            await page.until(f"{ATTEMPTS}.length === 1")
            [attempt] = await page.js(ATTEMPTS)
            assert attempt["outcome"] == "410"
            assert attempt["response"] == MARKUP.decode()  # the very characters, shown
            assert await page.js(f"{row('evil')}.querySelector('td.url').textContent") == url
            assert await page.js("document.querySelectorAll('#outbound img, #outbound b').length") == 0
            assert await page.js("window.pwned") is None
            assert not page.errors, page.errors
        nursery.cancel_scope.cancel()
