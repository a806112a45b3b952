"""The live inspector (``GET /``) in a real browser: headless Chromium driven
over the Chrome DevTools Protocol. Events are posted during the test and the
page must show them, pause and filter them, and copy one as a curl command
that replays the same bytes.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import json
import shutil

import msgspec
import trio
from trio_websocket import open_websocket_url

from browser import browser_page, needs_chromium
from conftest import config_text, running_relay
from relay.core.wire import Envelope
from relay.client.render import body_of

pytestmark = needs_chromium


CARDS = "[...document.querySelectorAll('#events .event')]"


async def test_the_inspector_shows_events_posted_while_it_watches(http, tmp_path):
    async with running_relay(config_text()) as relay, browser_page(f"{relay.base}/?channel=github.*",
                                                                   tmp_path / "profile") as page:
        await page.until("document.getElementById('status').className === 'live'")
        assert await page.js("document.getElementById('channel').value") == "github.*"

        body = b'{"action": "opened",\n "issue": {"number": 7, "title": "<b>not markup</b>"}, "ratio": 1.50}\n'
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": "d-1"}
        r = await http.post(f"{relay.base}/hooks/gh", content=body, headers=headers)
        assert r.status_code == 202
        first = r.json()["id"]
        await page.until(f"{CARDS}.length === 1")
        card = await page.js(f"""(() => {{ const c = {CARDS}[0]; return {{
            id: c.dataset.id, channel: c.querySelector('.channel').textContent,
            headers: [...c.querySelectorAll('table.headers tr')].map(r => [...r.cells].map(td => td.textContent)),
            payload: c.querySelector('pre.payload').textContent,
            bold: c.querySelectorAll('b').length }}; }})()""")
        assert card["id"] == first and card["channel"] == "github.issues"
        assert ["X-GitHub-Event", "issues"] in card["headers"]
        assert ["Content-Type", "application/json"] in card["headers"]
        assert card["payload"] == json.dumps(json.loads(body), indent=2)  # pretty-printed
        assert card["bold"] == 0  # a payload is shown as text, never as markup

        # Paused: events wait, counted; resumed: they appear, newest first.
        await page.js("document.getElementById('pause').click()")
        r = await http.post(f"{relay.base}/hooks/gh", json={"ref": "refs/heads/main"},
                            headers={"X-GitHub-Event": "push"})
        second = r.json()["id"]
        await page.until("document.getElementById('count').textContent.includes('1 waiting')")
        assert await page.js(f"{CARDS}.length") == 1
        await page.js("document.getElementById('pause').click()")
        await page.until(f"{CARDS}.length === 2")
        assert await page.js(f"{CARDS}.map(c => c.dataset.id)") == [second, first]

        # Filter: only matching events stay visible.
        await page.js("""(() => { const f = document.getElementById('filter');
            f.value = 'refs/heads'; f.dispatchEvent(new Event('input')); })()""")
        visible = await page.js(f"{CARDS}.filter(c => c.style.display !== 'none').map(c => c.dataset.id)")
        assert visible == [second]
        await page.js("""(() => { const f = document.getElementById('filter');
            f.value = ''; f.dispatchEvent(new Event('input')); })()""")

        # Copy as curl: the command, run by a shell, replays the same bytes.
        await page.js(f"{CARDS}[1].querySelector('.curl-button').click()")
        command = await page.until(f"{CARDS}[1].querySelector('pre.curl')?.textContent")
        assert command.startswith(f"curl -X POST '{relay.base}/hooks/gh'")
        assert "-H 'X-GitHub-Event: issues'" in command
        assert not page.errors, page.errors
        if shutil.which("curl") and shutil.which("bash"):
            async with open_websocket_url(f"{relay.ws_base}/ws?channel=github.*&since={second}") as ws:
                await ws.get_message()
                done = await trio.run_process(["bash", "-c", command], capture_stdout=True, capture_stderr=True)
                assert json.loads(done.stdout)["channel"] == "github.issues", done.stderr
                text = await ws.get_message()
            replay = msgspec.json.decode(text, type=Envelope)
            assert body_of(replay, text) == body
            await page.until(f"{CARDS}.length === 3")
