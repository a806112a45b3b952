"""A real browser for tests: headless Chromium driven over the Chrome DevTools
Protocol (flat session mode) with trio-websocket. Tests that use it skip with
a clear reason when Debian's chromium package is missing."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import open_websocket_url

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
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
