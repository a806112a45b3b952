"""The live inspector (``GET /``) in a real browser: headless Chromium driven
over the Chrome DevTools Protocol. Events are posted during the test and the
page must show them, pause and filter them, and copy one as a curl command
that replays the same bytes.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from contextlib import asynccontextmanager

import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay
from relay.tools import Frame, body_of

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing: apt-get install -y chromium")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]
DEVTOOLS = re.compile(rb"DevTools listening on (ws://\S+)")


class Page:
    """One tab, over the browser's DevTools socket (flat session mode)."""

    def __init__(self, ws, session: str) -> None:
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1000)
        self.errors: list[str] = []

    async def call(self, method: str, **params):
        return await cdp(self.ws, self.ids, method, params, self.session, self.errors)

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 15):
        """Poll until ``expression`` is truthy; the page has no event to wait on from here."""
        with trio.fail_after(timeout):
            while not (value := await self.js(expression)):
                await trio.sleep(0.05)
        return value


async def cdp(ws, ids, method, params, session=None, errors=None):
    call_id = next(ids)
    message = {"id": call_id, "method": method, "params": params}
    if session:
        message["sessionId"] = session
    await ws.send_message(json.dumps(message))
    with trio.fail_after(20):
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            if errors is not None and reply.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(reply["params"]["exceptionDetails"])[:500])
            if errors is not None and reply.get("method") == "Log.entryAdded":
                entry = reply["params"]["entry"]
                if entry["level"] == "error":
                    errors.append(entry["text"])


@asynccontextmanager
async def browser_page(url: str, profile):
    process = await trio.lowlevel.open_process([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE)
    try:
        seen = b""
        with trio.fail_after(30):
            while not (m := DEVTOOLS.search(seen)):
                chunk = await process.stderr.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"chromium did not start: {seen.decode(errors='replace')}")
                seen += chunk
        async with trio.open_nursery() as nursery:
            async def drain():  # a full stderr pipe would stall the browser
                while await process.stderr.receive_some(65536):
                    pass

            nursery.start_soon(drain)
            async with open_websocket_url(m.group(1).decode(), max_message_size=64 * 2**20) as ws:
                ids = itertools.count(1)
                target = await cdp(ws, ids, "Target.createTarget", {"url": "about:blank"})
                attached = await cdp(ws, ids, "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
                page = Page(ws, attached["sessionId"])
                await page.call("Runtime.enable")
                await page.call("Log.enable")
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                await page.until(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
                yield page
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stderr.aclose()


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
            replay = msgspec.json.decode(text, type=Frame)
            assert body_of(replay, text) == body
            await page.until(f"{CARDS}.length === 3")
