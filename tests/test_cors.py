"""CORS on ``/sse`` and the JSON admin views, as a browser's requests see it
over plain HTTP (a real EventSource from a second origin is in
test_browser_cors.py): the headers that let a page of an allowed origin read
the answer, the preflight, and nothing at all for any other origin."""

from __future__ import annotations

import httpx
import pytest

from conftest import config_text, running_relay

PAGE = "http://127.0.0.1:5173"
OTHER = "https://evil.example"
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods",
                "access-control-allow-headers", "access-control-max-age")


def relay_with(origins: str | None):
    """A relay whose ``auth.origins`` is ``origins`` (TOML), or absent."""
    return running_relay(config_text(f"[auth]\norigins = {origins}\n" if origins is not None else ""))


def no_cors(response: httpx.Response) -> bool:
    return not any(name in response.headers for name in CORS_HEADERS)


async def open_stream(http: httpx.AsyncClient, url: str, **headers: str):
    """The head of an event stream (or of the refusal), then the stream is closed."""
    async with http.stream("GET", url, headers=headers) as response:
        return response


async def test_an_event_stream_is_shared_with_an_allowed_origin_only(http):
    async with relay_with(f'["{PAGE}"]') as relay:
        r = await open_stream(http, f"{relay.base}/sse?channel=demo", Origin=PAGE)
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        assert r.headers["access-control-allow-origin"] == PAGE
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "Origin" in r.headers["vary"]

        r = await open_stream(http, f"{relay.base}/sse?channel=demo", Origin=OTHER)
        assert r.status_code == 403 and no_cors(r)

        r = await open_stream(http, f"{relay.base}/sse?channel=demo")  # no Origin: not a browser
        assert r.status_code == 200 and no_cors(r)


async def test_the_preflight_allows_get_and_the_headers_an_eventsource_or_fetch_sends(http):
    async with relay_with(f'["{PAGE}"]') as relay:
        for path in ("/sse?channel=demo", "/admin/routes", "/admin/channels"):
            r = await http.options(f"{relay.base}{path}", headers={
                "Origin": PAGE, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id, authorization, cache-control"})
            assert r.status_code == 204, (path, r.text)
            assert "content-length" not in r.headers and r.content == b""
            assert r.headers["access-control-allow-origin"] == PAGE
            assert r.headers["access-control-allow-credentials"] == "true"
            assert r.headers["access-control-allow-methods"] == "GET"
            allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
            assert {"last-event-id", "authorization", "cache-control"} <= allowed
            assert "Origin" in r.headers["vary"]

            r = await http.options(f"{relay.base}{path}", headers={"Origin": OTHER,
                                                                   "Access-Control-Request-Method": "GET"})
            assert r.status_code == 403 and no_cors(r), path
        # The connection the preflights came on still serves.
        assert (await http.get(f"{relay.base}/healthz")).status_code == 200


async def test_the_admin_views_share_their_answers_and_their_401_with_an_allowed_origin(http):
    extra = 'admin_token_env = "RELAY_ADMIN_TOKEN"\n'
    async with running_relay(config_text(f'[auth]\norigins = ["{PAGE}"]\n{extra}'),
                             env={"RELAY_ADMIN_TOKEN": "adm1n"}) as relay:
        for path in ("/admin/routes", "/admin/channels"):
            r = await http.get(f"{relay.base}{path}", headers={"Origin": PAGE, "Authorization": "Bearer adm1n"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE, path
            assert r.headers["access-control-allow-credentials"] == "true"
            # The page can read why it was refused.
            r = await http.get(f"{relay.base}{path}", headers={"Origin": PAGE})
            assert r.status_code == 401 and r.headers["access-control-allow-origin"] == PAGE
            # Another origin's page gets the answer it always got, which its browser will not show it.
            r = await http.get(f"{relay.base}{path}", headers={"Origin": OTHER, "Authorization": "Bearer adm1n"})
            assert r.status_code == 200 and no_cors(r)


@pytest.mark.parametrize("origins", ['["*"]', f'["https://dash.example", "{PAGE}"]'])
async def test_an_origin_allowed_by_the_list_or_by_a_star_is_named_back_never_as_a_star(http, origins):
    async with relay_with(origins) as relay:
        r = await open_stream(http, f"{relay.base}/sse?channel=demo", Origin=PAGE)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE


async def test_without_an_origin_list_no_other_origin_may_read_the_answers(http):
    # auth.origins absent: any Origin may subscribe (as over /ws), but no
    # other origin's page is let to read the answers (docs/security.md).
    async with relay_with(None) as relay:
        r = await open_stream(http, f"{relay.base}/sse?channel=demo", Origin=PAGE)
        assert r.status_code == 200 and no_cors(r)
        r = await http.get(f"{relay.base}/admin/routes", headers={"Origin": PAGE})
        assert r.status_code == 200 and no_cors(r)
        r = await http.options(f"{relay.base}/sse?channel=demo", headers={"Origin": PAGE,
                                                                          "Access-Control-Request-Method": "GET"})
        assert r.status_code == 403 and no_cors(r)
        # OPTIONS without an Origin is no preflight: it is told the methods.
        r = await http.options(f"{relay.base}/sse")
        assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS" and no_cors(r)
