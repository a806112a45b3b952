"""Publishing from a browser (contract section 10): the inspector in one
headless Chromium publishes to the channel it shows, another page receives
it live, and a token without a publish grant is refused on the page.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import json

from browser import browser_page, needs_chromium
from conftest import config_text, running_relay

pytestmark = needs_chromium

AUTH = """
[auth]
tokens = [{ token = "chatter", channels = ["chat.*"], publish = ["chat.*"] }, { token = "reader", channels = ["chat.*"] }]
"""
CARDS = "[...document.querySelectorAll('#events .event')]"


async def type_and_publish(page, text: str, channel: str = "") -> None:
    await page.js(f"""(() => {{
        document.getElementById('publish-channel').value = {json.dumps(channel)};
        document.getElementById('publish-data').value = {json.dumps(text)};
        document.getElementById('publish').click(); }})()""")


async def test_one_page_publishes_and_another_receives_it_live(tmp_path):
    async with running_relay(config_text(AUTH)) as relay, \
            browser_page(f"{relay.base}/?channel=chat.room&token=chatter", tmp_path / "a") as writer, \
            browser_page(f"{relay.base}/?channel=chat.*&token=reader", tmp_path / "b") as reader:
        for page in (writer, reader):
            await page.until("document.getElementById('status').className === 'live'")
        text = '{"text": "<b>hello</b> from a browser",  "n": 1.50}'
        await type_and_publish(writer, text)
        await writer.until("document.getElementById('publish-status').textContent.startsWith('published')")
        status = await writer.js("document.getElementById('publish-status').textContent")
        event_id = status.split()[1]
        # The other page shows it, as text, with the route "ws".
        await reader.until(f"{CARDS}.length === 1")
        card = await reader.js(f"""(() => {{ const c = {CARDS}[0]; return {{ id: c.dataset.id,
            channel: c.querySelector('.channel').textContent, text: c.textContent,
            payload: c.querySelector('pre.payload').textContent, bold: c.querySelectorAll('b').length }}; }})()""")
        assert card["id"] == event_id and card["channel"] == "chat.room" and card["bold"] == 0
        assert json.loads(card["payload"]) == json.loads(text) and "ws" in card["text"]
        # The writer's own page shows it too (it subscribes to chat.room).
        await writer.until(f"{CARDS}.length === 1")

        # A token that may read but not publish: refused, said on the page.
        await type_and_publish(reader, '{"text": "no"}', "chat.room")
        await reader.until("document.getElementById('publish-status').textContent.startsWith('refused')")
        refused = await reader.js("document.getElementById('publish-status').textContent")
        assert "forbidden" in refused
        # A pattern, and a message that is not JSON, are caught before sending.
        await type_and_publish(reader, '{"a": 1}')
        assert "not a pattern" in await reader.js("document.getElementById('publish-status').textContent")
        await type_and_publish(writer, "{nope")
        assert "not JSON" in await writer.js("document.getElementById('publish-status').textContent")
        assert not writer.errors and not reader.errors, (writer.errors, reader.errors)
