"""Config loading without a relay: defaults, what is read from the
environment (once, by the loader), and the rules the config shares with the
core (channel patterns, verify schemes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.load import parse
from relay.config.model import AuthConfig, Config
from relay.core.errors import ConfigError
from relay.core.verify import SCHEMES

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env=env or {})
    return dict(info.value.problems)


def test_an_empty_file_is_the_contracts_defaults():
    config = parse("", env={})
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.max_connections == 10_000
    assert config.store.engine == "sqlite" and config.store.retention == 100_000
    assert config.delivery.queue == 1024 and config.delivery.slow_consumer == "disconnect"
    assert config.routes == {} and config.admin_guard is None


def test_secrets_and_tokens_are_read_from_the_given_environment_by_the_loader():
    text = """
    [auth]
    tokens = [{ token_env = "SUB", channels = ["github.*", "*", "demo"] }]
    admin_token_env = "ADMIN"
    [routes.gh]
    verify = "github"
    secret_env = ["OLD", "NEW"]
    """
    config = parse(text, env={"SUB": "t0k", "ADMIN": "adm", "OLD": "o", "NEW": "n"})
    assert config.secrets["gh"] == (b"o", b"n")
    assert config.tokens == {"t0k": ("github.*", "*", "demo")}
    assert config.admin_guard == b"adm"


def test_the_admin_token_comes_from_the_loader_never_from_the_environment_later(monkeypatch):
    monkeypatch.setenv("ADMIN", "from-the-environment")
    unloaded = Config(auth=AuthConfig(admin_token_env="ADMIN"))
    # A config the loader did not fill locks the admin views; it does not
    # fall back to reading the variable.
    assert unloaded.admin_guard == b""
    assert problems('[auth]\nadmin_token_env = "ADMIN"\n') == {
        "auth.admin_token_env": "environment variable ADMIN is not set"}


@pytest.mark.parametrize("pattern", ["github.*.x", "a b", "", "x" * 201, ".*x"])
def test_a_token_channel_that_is_no_channel_or_pattern_is_named(pattern):
    text = f'[auth]\ntokens = [{{ token = "t", channels = ["ok", {json.dumps(pattern)}] }}]\n'
    assert problems(text) == {"auth.tokens[0].channels": f"{pattern!r} is not a channel name or pattern"}


def test_every_verify_scheme_of_the_core_is_a_config_value_and_nothing_else_is():
    for scheme in SCHEMES:
        extra = 'signature_header = "X-Sig"\n' if scheme == "hmac-sha256" else ""
        secret = 'secret = "whsec_c2VjcmV0"\n' if scheme != "none" else ""
        parse(f'[routes.r]\nverify = "{scheme}"\n{secret}{extra}', env={})
    assert "routes.r.verify" in problems('[routes.r]\nverify = "gitlab"\nsecret = "s"\n')


def test_a_redis_url_is_checked_and_its_password_never_shown():
    found = problems('[store]\nengine = "redis"\nurl = "http://user:hunter2@host:6379/0"\n')
    assert list(found) == ["store.url"] and "hunter2" not in found["store.url"]


def test_loading_a_redis_config_loads_no_event_loop_and_no_engine(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('[store]\nengine = "redis"\nurl = "redis://127.0.0.1:6379/0"\n')
    script = (f"import sys, json; from relay.config.load import load; config = load({str(path)!r}); "
              "assert config.store.engine == 'redis'; "
              "print(json.dumps([m for m in ('trio', 'anyio', 'coredis', 'relay.store') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_publish_sections_and_token_publish_grants_are_read_and_checked():
    config = parse("""
    [auth]
    tokens = [{ token = "w", channels = ["chat.*"], publish = ["chat.*"] }, { token = "r", channels = ["*"] }]

    [publish."chat.*"]
    max_bytes = 1024
    rate = 5.0
    burst = 10
    """, env={})
    assert config.token_publish == {"w": ("chat.*",)}
    section = config.publish["chat.*"]
    assert (section.max_bytes, section.rate, section.burst, section.schema) == (1024, 5.0, 10, None)
    assert parse("", env={}).publish == {}
    found = problems("""
    [auth]
    tokens = [{ token = "w", channels = ["a"], publish = ["bad channel"] }]

    [publish."no good"]
    max_bytes = 10

    [publish."x.*"]
    burst = 3
    max_bytes = 0
    schema = "missing.json"
    unknown = 1
    """)
    assert "auth.tokens[0].publish" in found
    assert "publish.no good" in found
    assert found["publish.x.*.burst"] == "burst needs rate"
    assert "publish.x.*.max_bytes" in found and "publish.x.*.unknown" in found
    assert "file not found" in found["publish.x.*.schema"]
