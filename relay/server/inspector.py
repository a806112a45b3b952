"""``GET /``: the live inspector, one self-contained HTML page shipped in the package.

The page (``inspector.html``) needs nothing but this relay: no CDN, no build
step. It subscribes over ``/ws`` like any other client, so the relay's auth
applies to it unchanged; its "Outbound endpoints" panel reads
``/admin/endpoints`` with the admin token the user types in (kept in the
tab's sessionStorage). Its inline script and style are pinned by hash in a
Content-Security-Policy: the page can talk to its own origin only, and a
payload that smuggled markup into it could not run script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from ..core.errors import MethodNotAllowed
from ..core.request import Request
from .router import Responder


@cache
def page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy, read once."""
    html = files("relay.server").joinpath("inspector.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


class Inspector:
    async def answer(self, request: Request, responder: Responder) -> None:
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not allowed here", "GET")
        body, csp = page()
        await responder.send(200, body, [
            ("content-security-policy", csp),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-cache"),
        ], content_type="text/html; charset=utf-8")
