"""``relay check`` and the config: every problem named by its key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config.load import parse
from relay.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def check(path: Path | str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "relay", "check", "-c", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, env={**os.environ, **(env or {})})


def test_the_shipped_default_config_passes_check():
    done = check(ROOT / "config" / "relay.toml")
    assert done.returncode == 0, done.stderr


def test_check_names_every_problem_with_its_key_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\nlisten = "nowhere"\n'
        '[store]\nretention = "many"\n'
        '[routes.a]\nverify = "hmac-sha256"\nsecret_env = "RELAY_TEST_UNSET_SECRET"\n'
        '[routes.b]\nchanel = "typo"\n'
        '[routes.c]\nchannel = "x.{header}"\n'
        '[sever]\n'
    )
    done = check(path)
    assert done.returncode == 2
    err = done.stderr
    for key in ("server.listen", "store.retention", "routes.a.secret_env", "routes.a.signature_header",
                "routes.b.chanel", "routes.c.channel", "sever"):
        assert key in err, (key, err)
    assert "'many'" in err  # the value is named too
    assert "RELAY_TEST_UNSET_SECRET" in err


def test_check_names_every_problem_in_every_section_not_the_first_of_each(tmp_path):
    (tmp_path / "one.json").write_text('{"type": "object", "oneOf": []}')
    (tmp_path / "two.json").write_text('{"type": "strin"}')
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\nlisten = "nowhere"\nmax_body_bytes = -1\nshutdown_grace = -5\n'
        '[log]\nlevel = "loud"\nformat = "xml"\n'
        '[store]\nretention = "many"\nretention_age = -1\n'
        '[auth]\ntokens = [{ token = 5, channels = ["a"] }, { token_env = "RELAY_TEST_UNSET_TOKEN", channels = ["a"] }]\n'
        '[routes.a]\nverify = "hmac-sha256"\nsecret = 7\nrate = -1\nburst = 5\nbogus = 1\n'
        f'[routes.b]\nschema = "{tmp_path / "one.json"}"\n'
        f'[routes.c]\nschema = "{tmp_path / "two.json"}"\n'
    )
    done = check(path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()[1:]
    named = {line.strip().split(": ", 1)[0]: line.strip().split(": ", 1)[1] for line in lines}
    expected = {
        "server.listen": "'nowhere'",
        "server.max_body_bytes": "-1",
        "server.shutdown_grace": "-5",
        "log.level": "'loud'",
        "log.format": "'xml'",
        "store.retention": "'many'",
        "store.retention_age": "-1",
        "auth.tokens[0].token": "5",
        "auth.tokens[1].token_env": "RELAY_TEST_UNSET_TOKEN",
        "routes.a.secret": "7",
        "routes.a.rate": "-1",
        "routes.a.bogus": "unknown key",
        "routes.a.signature_header": "needs the header",
        "routes.b.schema": "'oneOf'",
        "routes.c.schema": "'strin'",
    }
    for key, value in expected.items():
        assert key in named and value in named[key], (key, done.stderr)
    # A rule about a key already named as bad is not reported twice over:
    # "burst needs rate" while rate is -1, "give token or token_env" while token is 5.
    assert "routes.a.burst" not in named and "auth.tokens[0]" not in named, done.stderr
    assert f"{len(named)} problem(s)" in done.stderr.splitlines()[0] and len(named) == len(lines)


def test_a_secret_from_the_environment_is_accepted(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[routes.a]\nverify = "hmac-sha256"\nsecret_env = "RELAY_TEST_SECRET"\nsignature_header = "X-Sig"\n')
    assert check(path, {"RELAY_TEST_SECRET": "x"}).returncode == 0
    assert check(path).returncode == 2


def test_a_missing_config_file_exits_2(tmp_path):
    done = check(tmp_path / "absent.toml")
    assert done.returncode == 2
    assert "cannot read" in done.stderr


def test_unknown_arguments_exit_2():
    done = subprocess.run([sys.executable, "-m", "relay", "serve", "--bogus"], capture_output=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[delivery]\nslow_consumer = \"explode\"\n", "delivery.slow_consumer"),
        ("[store]\nengine = \"redis\"\nurl = \"http://x\"\n", "store.url"),
        ("[routes.a]\nverify = \"github\"\n", "routes.a.verify"),
        ("[routes.a]\nschema = \"missing.json\"\n", "routes.a.schema"),
        ("[routes.a]\nburst = 5\n", "routes.a.burst"),
        ("[routes.\"a b\"]\n", "routes.a b"),
        ("[server.tls]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n", "server.tls.cert"),
        ("routes = 3\n", "routes"),
    ],
)
def test_each_bad_value_is_refused_with_its_key(text, key):
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert key in [k for k, _ in info.value.problems], info.value.problems


def test_not_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[server\n", env={})


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("github.toml", {"GITHUB_WEBHOOK_SECRET": "x"}),
        ("stripe.toml", {"STRIPE_WEBHOOK_SECRET": "whsec_x"}),
        ("slack.toml", {"SLACK_SIGNING_SECRET": "x"}),
        ("standard.toml", {"APP_WEBHOOK_SECRET": "whsec_c2VjcmV0LWtleS1ieXRlcw=="}),
    ],
)
def test_the_example_configs_pass_check_once_their_secret_is_set(name, env):
    assert check(ROOT / "config" / name, env).returncode == 0, check(ROOT / "config" / name, env).stderr
    assert check(ROOT / "config" / name).returncode == 2


def test_check_of_a_redis_config_loads_neither_trio_nor_the_redis_client(tmp_path):
    # `relay check` runs where the daemon may not (a CI step, a deploy
    # hook): it reads the config and its files, and starts nothing.
    path = tmp_path / "relay.toml"
    path.write_text('[store]\nengine = "redis"\nurl = "redis://127.0.0.1:6379/0"\n')
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "relay", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "relay.config.load" in imported  # (the list is the relay's own imports too)
    assert not {"trio", "anyio", "coredis", "relay.store.redis"} & imported
