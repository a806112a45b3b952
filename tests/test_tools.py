"""``relay tail``, ``relay forward`` and ``relay send`` as a developer runs them:
real subprocesses against a relay on port 0, and a local app (a small trio
HTTP server) that checks the sender's signature with the original secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
from contextlib import asynccontextmanager

import h11
import pytest
import trio
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay
from relay.client.send import signed_headers
from relay.core.verify import VerifySpec, verify

SECRET = "It's a Secret to Everybody"
GITHUB = f"""
[routes.hub]
channel = "github.{{header:X-GitHub-Event}}"
verify = "github"
secret = "{SECRET}"
forward_headers = ["X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"]
"""
# Spacing, key order and number spelling a re-encode would change.
BODY = b'{"zen":  "Keep it logically awesome.",\n "hook_id": 1.50, "z": 1, "a": [ ]}\n'


def github_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Proc:
    """A ``relay`` subprocess whose output is read line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffers = {"out": b"", "err": b""}

    async def line(self, which: str = "out", timeout: float = 15) -> str:
        stream = self.process.stdout if which == "out" else self.process.stderr
        with trio.fail_after(timeout):
            while b"\n" not in self.buffers[which]:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise EOFError(f"std{which} ended; so far: {self.buffers[which]!r}")
                self.buffers[which] += chunk
        line, _, self.buffers[which] = self.buffers[which].partition(b"\n")
        return line.decode()

    async def wait_for(self, text: str, which: str = "err") -> str:
        while text not in (line := await self.line(which)):
            pass
        return line

    async def rest(self, which: str = "out", timeout: float = 15) -> str:
        stream = self.process.stdout if which == "out" else self.process.stderr
        with trio.fail_after(timeout):
            while chunk := await stream.receive_some(65536):
                self.buffers[which] += chunk
        out, self.buffers[which] = self.buffers[which], b""
        return out.decode()

    async def exit_code(self, timeout: float = 15) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def relay_cli(*args: str, env: dict[str, str] | None = None):
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    try:
        yield Proc(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for stream in (process.stdout, process.stderr):
                await stream.aclose()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with relay_cli(*args, env=env) as proc:
        out, err = await proc.rest("out"), await proc.rest("err")
        return await proc.exit_code(), out, err


# -- a local app that receives forwarded webhooks ---------------------------


class LocalApp:
    """POST /hook: records each request; answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.send, self.received = trio.open_memory_channel[tuple[dict[str, str], bytes, str]](100)
        self.url = ""

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"
        task_status.started(self)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request, body = None, b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            headers = {k.decode(): v.decode() for k, v in request.headers}
            await self.send.send((headers, body, request.target.decode()))
            await stream.send_all(conn.send(h11.Response(status_code=self.status, headers=[("content-length", "2")]))
                                  + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage()))


# -- forward ------------------------------------------------------------------


async def test_forward_delivers_a_github_webhook_the_local_app_can_verify(http):
    async with running_relay(config_text(GITHUB)) as relay, trio.open_nursery() as nursery:
        app = await nursery.start(LocalApp().serve)
        async with relay_cli("forward", relay.base, "github.*", "--to", app.url, "--count", "1") as forward:
            await forward.wait_for("subscribed to github.*")
            headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
                       "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                       "X-Hub-Signature-256": github_signature(BODY)}
            r = await http.post(f"{relay.base}/hooks/hub", content=BODY, headers=headers)
            assert r.status_code == 202, r.text
            with trio.fail_after(15):
                got_headers, got_body, target = await app.received.receive()
            report = await forward.line("out")
            assert await forward.exit_code() == 0
        nursery.cancel_scope.cancel()
    # The local app checks the sender's signature with the sender's secret.
    assert got_body == BODY
    assert hmac.compare_digest(got_headers["x-hub-signature-256"], github_signature(got_body))
    assert verify(VerifySpec("github", (SECRET.encode(),)), got_headers, got_body, now=0) == headers["X-GitHub-Delivery"]
    assert got_headers["x-github-event"] == "push"
    assert got_headers["content-type"] == "application/json"
    assert target == "/hook"
    assert re.fullmatch(rf"{r.json()['id']} github\.push -> POST {re.escape(app.url)} 200 OK \(\d+ ms\)", report)


async def test_forward_reports_a_failing_local_app_and_carries_on(http):
    async with running_relay() as relay, trio.open_nursery() as nursery:
        app = await nursery.start(LocalApp(status=500).serve)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        # Nothing listens on closed_port: the first delivery fails, the relay
        # keeps the event, and a second forwarder (to the app) still gets it.
        first = await relay_post(http, relay, {"n": 1})
        code, out, err = await run_cli("forward", relay.base, "demo", "--since", "", "--count", "1",
                                       "--to", f"http://127.0.0.1:{closed_port}/hook", "--timeout", "5")
        assert code == 0, err
        assert out.startswith(f"{first} demo -> POST http://127.0.0.1:{closed_port}/hook failed: ")
        code, out, err = await run_cli("forward", relay.base, "demo", "--since", "", "--count", "1", "--to", app.url)
        assert code == 0, err
        assert f"{first} demo -> POST {app.url} 500" in out
        nursery.cancel_scope.cancel()


async def relay_post(http, relay, obj, route="demo"):
    r = await http.post(f"{relay.base}/hooks/{route}", json=obj)
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def test_forward_re_posts_a_form_body_as_the_form_it_was(http):
    form_route = '[routes.form]\nchannel = "form"\naccept = ["json", "form"]\n'
    async with running_relay(config_text(form_route)) as relay, trio.open_nursery() as nursery:
        app = await nursery.start(LocalApp().serve)
        body = b"command=%2Fdeploy&text=prod+now"
        r = await http.post(f"{relay.base}/hooks/form", content=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 202, r.text
        code, out, err = await run_cli("forward", relay.base, "form", "--since", "", "--count", "1", "--to", app.url)
        assert code == 0, err
        got_headers, got_body, _ = app.received.receive_nowait()
        nursery.cancel_scope.cancel()
    assert got_body == body
    assert got_headers["content-type"] == "application/x-www-form-urlencoded"


# -- tail ---------------------------------------------------------------------


async def test_tail_prints_each_event_as_one_json_line_when_piped(http, relay):
    async with relay_cli("tail", relay.base, "demo,github.*", "--count", "2") as tail:
        await tail.wait_for("subscribed to demo, github.*")
        first = await relay_post(http, relay, {"n": 1, "text": "two\nlines"})
        r = await http.post(f"{relay.base}/hooks/gh", json={"n": 2}, headers={"X-GitHub-Event": "issues"})
        second = r.json()["id"]
        lines = [json.loads(await tail.line()), json.loads(await tail.line())]
        assert await tail.exit_code() == 0
    assert [(e["id"], e["channel"], e["data"]) for e in lines] == [
        (first, "demo", {"n": 1, "text": "two\nlines"}), (second, "github.issues", {"n": 2})]
    assert lines[1]["headers"]["X-GitHub-Event"] == "issues"


async def test_tail_prints_a_multi_line_body_with_a_number_beyond_a_double_as_one_line_keeping_the_number(http, relay):
    body = b'{\n  "amount": 1e400,\n  "n": 1\n}\n'
    r = await http.post(f"{relay.base}/hooks/demo", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    code, out, err = await run_cli("tail", relay.base, "demo", "--since", "", "--count", "1")
    assert code == 0, err
    (line,) = out.splitlines()
    assert '"amount": 1e400' in line and json.loads(line)["data"]["n"] == 1


async def test_tail_pretty_prints_headers_and_payload(http, relay):
    await relay_post(http, relay, {"n": 1, "nested": {"ok": True}})
    code, out, err = await run_cli("tail", relay.base, "demo", "--since", "", "--count", "1", "--format", "pretty")
    assert code == 0, err
    assert "demo" in out.splitlines()[0] and "route demo" in out.splitlines()[0]
    assert "  Content-Type: application/json" in out
    assert '    "nested": {\n      "ok": true\n    }' in out


async def test_tail_resumes_by_itself_after_the_relay_restarts(http, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = config_text(store=f'engine = "sqlite"\npath = "{tmp_path / "relay.db"}"').replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    ids = []
    async with relay_cli("tail", f"http://127.0.0.1:{port}", "demo", "--count", "3") as tail:
        async with running_relay(text) as relay:
            await tail.wait_for("subscribed to demo")
            ids.append(await relay_post(http, relay, {"n": 1}))
            got = [json.loads(await tail.line())["id"]]
        # The relay is gone (the tail saw 1001); events arrive while the tail waits to retry.
        async with running_relay(text) as relay:
            ids.append(await relay_post(http, relay, {"n": 2}))
            await tail.wait_for("resumed after")
            ids.append(await relay_post(http, relay, {"n": 3}))
            got += [json.loads(await tail.line())["id"], json.loads(await tail.line())["id"]]
            assert await tail.exit_code() == 0
    assert got == ids


async def test_tail_gives_up_on_a_refusal_no_retry_can_change(relay):
    code, out, err = await run_cli("tail", relay.base, "not a channel!")
    assert code == 1
    assert "refused the subscription: " in err and "400" in err


# -- send ---------------------------------------------------------------------


async def test_send_signs_as_github_and_the_relay_accepts_it(relay_with_github, tmp_path):
    relay = relay_with_github
    payload = tmp_path / "push.json"
    payload.write_bytes(BODY)
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=github.*") as ws:
        await ws.get_message()
        code, out, err = await run_cli("send", relay.base, "hub", "--preset", "github", "--secret-env", "GH_SECRET",
                                       "--event", "push", str(payload), env={"GH_SECRET": SECRET})
        assert code == 0, err
        assert out.startswith("202 Accepted {")
        with trio.fail_after(10):
            event = json.loads(await ws.get_message())
    assert event["channel"] == "github.push"
    assert event["id"] == json.loads(out.split(" ", 2)[2])["id"]
    assert event["delivery"] and event["headers"]["X-GitHub-Delivery"] == event["delivery"]
    assert event["data"] == json.loads(BODY)


async def test_send_with_the_wrong_secret_is_refused_and_exits_1(relay_with_github, tmp_path):
    payload = tmp_path / "push.json"
    payload.write_bytes(BODY)
    code, out, err = await run_cli("send", relay_with_github.base, "hub", "--preset", "github", "--secret", "guess",
                                   str(payload))
    assert code == 1
    assert out.startswith("401 Unauthorized ") and "bad_signature" in out


async def test_send_refuses_bad_arguments_with_exit_2(relay, tmp_path):
    payload = tmp_path / "p.json"
    payload.write_bytes(b"{}")
    for args in (["--preset", "github", str(payload)],  # no secret
                 ["--preset", "stripe", "--secret", "s", "--event", "x", str(payload)],  # stripe has no event header
                 ["--preset", "github", "--secret", "s", str(tmp_path / "missing.json")]):
        code, out, err = await run_cli("send", relay.base, "demo", *args)
        assert code == 2, (args, err)
        assert err.startswith("relay send: ") or "--event" in err


@pytest.fixture
async def relay_with_github():
    async with running_relay(config_text(GITHUB)) as relay:
        yield relay


@pytest.mark.parametrize("preset", ["github", "stripe", "slack", "shopify", "standard", "hmac-sha256"])
def test_send_signs_every_preset_the_way_the_relay_checks_it(preset):
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" if preset == "standard" else "shh"
    body = b'{"id": "evt_1", "type": "charge.succeeded"}'
    headers = signed_headers(preset, secret, body, 1_700_000_000, signature_header="X-Signature",
                             prefix="sha256=")
    lowered = {k.lower(): v for k, v in headers}
    spec = VerifySpec(preset, (secret.encode(),), header="X-Signature", prefix="sha256=")
    verify(spec, lowered, body, 1_700_000_010)  # raises BadSignature when wrong
    assert lowered["content-type"] == "application/json"
    if preset == "github":
        assert lowered["x-github-event"] == "push" and lowered["x-github-delivery"]

