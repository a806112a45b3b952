"""TLS on the relay's own port and JWT subscriber tokens, with clients that
verify what they are told."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from conftest import config_text, running_relay
from relay.config.load import parse
from relay.core.errors import ConfigError

SECRET = "a-long-enough-hs256-secret-of-32-bytes-or-more"


def client_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_ingest_and_wss_and_sse_over_tls_with_a_verifying_client(ca, tls_files):
    cert, key = tls_files
    text = config_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
    async with running_relay(text) as relay:
        host, port = relay.app.address
        context = client_context(ca)
        async with httpx.AsyncClient(verify=context) as http, \
                open_websocket_url(f"wss://127.0.0.1:{port}/ws?channel=demo", ssl_context=context) as ws:
            assert json.loads(await ws.get_message())["type"] == "welcome"
            r = await http.post(f"https://127.0.0.1:{port}/hooks/demo", json={"secure": True})
            assert r.status_code == 202
            event = json.loads(await ws.get_message())
            assert event["id"] == r.json()["id"] and event["data"] == {"secure": True}
            async with http.stream("GET", f"https://127.0.0.1:{port}/sse?channel=demo&since=") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        assert line == f"id: {event['id']}"
                        break


async def test_a_client_that_does_not_trust_the_certificate_is_refused_and_costs_nothing(ca, tls_files):
    cert, key = tls_files
    async with running_relay(config_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')) as relay:
        port = relay.app.address[1]
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:  # system trust store: our CA is not in it
                await http.get(f"https://127.0.0.1:{port}/healthz")
        # Plain HTTP to the TLS port: a failed handshake, closed.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(15):
            while await stream.receive_some(4096):
                pass
        await stream.aclose()
        async with httpx.AsyncClient(verify=client_context(ca)) as http:
            assert (await http.get(f"https://127.0.0.1:{port}/healthz")).status_code == 200


def test_bad_certificate_or_key_paths_are_config_errors_naming_the_key(tmp_path, tls_files):
    cert, key = tls_files
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for tls, field in [(f'cert = "{tmp_path}/none.pem"\nkey = "{key}"', "server.tls.cert"),
                       (f'cert = "{garbage}"\nkey = "{key}"', "server.tls.cert"),
                       (f'cert = "{cert}"\nkey = "{garbage}"', "server.tls.key")]:
        with pytest.raises(ConfigError) as info:
            parse(f"[server.tls]\n{tls}\n", env={})
        assert field in [k for k, _ in info.value.problems], info.value.problems


JWT_CONFIG = '[auth]\njwt_secret_env = "RELAY_TEST_JWT"\n'


def hs(claims: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


@pytest.fixture
async def jwt_relay():
    async with running_relay(config_text(JWT_CONFIG), env={"RELAY_TEST_JWT": SECRET}) as relay:
        yield relay


async def rejected(url: str) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url):
            pass
    return info.value.status_code


async def test_a_valid_jwt_reads_only_its_channels(jwt_relay, http):
    token = hs({"channels": ["a.*"], "exp": time.time() + 60})
    async with open_websocket_url(f"{jwt_relay.ws_base}/ws?channel=a.x&token={token}") as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"
    assert await rejected(f"{jwt_relay.ws_base}/ws?channel=b.x&token={token}") == 403
    r = await http.get(f"{jwt_relay.base}/sse?channel=b.x", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


def _rsa_pem() -> tuple[bytes, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("case", ["expired", "not_yet_valid", "wrong_secret", "alg_none", "no_channels", "garbage"])
async def test_bad_jwts_are_refused_with_401(jwt_relay, case):
    now = time.time()
    token = {
        "expired": lambda: hs({"channels": ["*"], "exp": now - 60}),
        "not_yet_valid": lambda: hs({"channels": ["*"], "nbf": now + 600, "exp": now + 900}),
        "wrong_secret": lambda: hs({"channels": ["*"], "exp": now + 60}, secret="another-secret-that-is-also-32-bytes-long"),
        "alg_none": lambda: jwt.encode({"channels": ["*"], "exp": now + 60}, None, algorithm="none"),
        "no_channels": lambda: hs({"exp": now + 60}),
        "garbage": lambda: "abc.def.ghi",
    }[case]()
    assert await rejected(f"{jwt_relay.ws_base}/ws?channel=x&token={token}") == 401


async def test_rs256_keys_accept_rs256_and_refuse_hs_rs_confusion(tmp_path):
    private_pem, public_pem = _rsa_pem()
    (tmp_path / "jwt.pem").write_bytes(public_pem)
    text = config_text(f'[auth]\njwt_public_key = "{tmp_path}/jwt.pem"\n')
    async with running_relay(text) as relay:
        good = jwt.encode({"channels": ["*"], "exp": time.time() + 60},
                          serialization.load_pem_private_key(private_pem, None), algorithm="RS256")
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=x&token={good}") as ws:
            assert json.loads(await ws.get_message())["type"] == "welcome"
        # HS256 signed with the public key as the HMAC secret: the classic confusion.
        import hashlib
        import hmac as hmac_
        import base64

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps({"channels": ["*"], "exp": int(time.time()) + 60}).encode())
        sig = b64(hmac_.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
        assert await rejected(f"{relay.ws_base}/ws?channel=x&token={head}.{body}.{sig}") == 401


async def test_es256_public_keys_work_too(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwt.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    async with running_relay(config_text(f'[auth]\njwt_public_key = "{tmp_path}/jwt.pem"\n')) as relay:
        token = jwt.encode({"channels": ["*"], "exp": time.time() + 60}, private, algorithm="ES256")
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=x&token={token}") as ws:
            assert json.loads(await ws.get_message())["type"] == "welcome"


async def test_an_expiring_connection_closes_with_4001_unless_refreshed(autojump_clock):
    async with running_relay(config_text(JWT_CONFIG), env={"RELAY_TEST_JWT": SECRET}) as relay:
        start = relay.app.now()
        short = hs({"channels": ["a.*"], "exp": start + 30})
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=a.x&token={short}") as ws:
            await ws.get_message()
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(120):
                    while True:
                        await ws.get_message()
            assert info.value.reason.code == 4001
            assert relay.app.now() >= start + 30

        async with open_websocket_url(f"{relay.ws_base}/ws?channel=a.x&token={hs({'channels': ['a.*'], 'exp': relay.app.now() + 30})}") as ws:
            await ws.get_message()
            await trio.sleep(20)
            # A bad refresh changes nothing...
            await ws.send_message(json.dumps({"type": "refresh", "token": "nonsense"}))
            assert json.loads(await ws.get_message())["type"] == "error"
            # ...a narrower one neither...
            narrow = hs({"channels": ["z"], "exp": relay.app.now() + 300})
            await ws.send_message(json.dumps({"type": "refresh", "token": narrow}))
            assert json.loads(await ws.get_message())["error"] == "forbidden"
            # ...a good one keeps the connection past the first token's expiry.
            fresh = hs({"channels": ["a.*"], "exp": relay.app.now() + 300})
            await ws.send_message(json.dumps({"type": "refresh", "token": fresh}))
            assert json.loads(await ws.get_message())["type"] == "refreshed"
            await trio.sleep(60)
            assert relay.app.subscriber_count() == 1


async def test_an_sse_stream_ends_when_its_token_expires(autojump_clock):
    async with running_relay(config_text(JWT_CONFIG), env={"RELAY_TEST_JWT": SECRET}) as relay, \
            httpx.AsyncClient(timeout=300) as http:
        token = hs({"channels": ["*"], "exp": relay.app.now() + 30})
        start = relay.app.now()
        async with http.stream("GET", f"{relay.base}/sse?channel=demo&token={token}") as response:
            assert response.status_code == 200
            with trio.fail_after(200):
                async for _ in response.aiter_lines():
                    pass
        assert relay.app.now() >= start + 30


def test_relay_token_mints_a_token_the_relay_accepts(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "relay.toml"
    path.write_text(JWT_CONFIG)
    done = subprocess.run([sys.executable, "-m", "relay", "token", "-c", str(path), "--channels", "github.*,demo",
                           "--ttl", "120"], capture_output=True, text=True, env={**os.environ, "RELAY_TEST_JWT": SECRET},
                          timeout=30)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["channels"] == ["github.*", "demo"] and 100 < claims["exp"] - time.time() <= 120
