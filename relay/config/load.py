"""Loading the config file: TOML decoded into the Structs of ``model.py``, every problem collected.

One run of ``relay check`` names every problem it can find, each with its key.
msgspec stops at the first error of a decode, so a section that fails is
taken apart (``_decode``): each key of it is decoded on its own, down into
nested tables and lists, every bad one is reported, and the section is built
from the keys that were good (the bad ones at their defaults) so that the
cross-field rules still run on the rest. Those rules (a secret the verify
scheme needs, an environment variable that is not set, a file that is
missing) are checked after decoding, all of them, before anything starts; a
rule about a key that was already reported as bad is not checked again.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
import types
import typing
from typing import Any

import msgspec
from msgspec import Struct

from ..core.channels import TemplateError, compile_template, parse_pattern
from ..core.errors import ConfigError
from ..core.schema import load_schema
from . import files
from ..core import addresses, whsec
from .model import (AuthConfig, Config, DeliveryConfig, EndpointConfig, LogConfig, OutboundConfig, PublishConfig,
                    RouteConfig, ServerConfig, StoreConfig)

ROUTE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

_SECTIONS: dict[str, type[Struct]] = {
    "server": ServerConfig,
    "log": LogConfig,
    "store": StoreConfig,
    "delivery": DeliveryConfig,
    "auth": AuthConfig,
    "outbound": OutboundConfig,
}


def _value_at(raw: object, path: str) -> object:
    node = raw
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            node = node[name] if name else node[int(index)]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _where(prefix: str, err: msgspec.ValidationError, raw: object = None) -> tuple[str, str]:
    """Turn msgspec's "Expected `int`, got `str` - at `$.x`" into (key, why)."""
    text = str(err)
    message, sep, path = text.rpartition(" - at `")
    if not sep:
        message, path = text, "$"
    # "$.a[0].b" -> "<prefix>.a[0].b"
    key = prefix + path.rstrip("`").removeprefix("$")
    m = re.match(r"Object contains unknown field `([^`]+)`", message)
    if m:
        return f"{key}.{m.group(1)}", "unknown key"
    m = re.match(r"Object missing required field `([^`]+)`", message)
    if m:
        return f"{key}.{m.group(1)}", "required key is missing"
    value = _value_at(raw, path.rstrip("`").removeprefix("$"))
    return key, f"{value!r}: {message}" if value is not None else message


_BAD = object()  # what ``_decode`` returns for a value that nothing could be made of


def _struct_in(typ: Any) -> type[Struct] | None:
    """The Struct a field holds: ``S`` or ``S | None``; None for anything else."""
    if isinstance(typ, type) and issubclass(typ, Struct):
        return typ
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        structs = [t for t in typing.get_args(typ) if t is not type(None)]
        if len(structs) == 1:
            return _struct_in(structs[0])
    return None


def _decode(value: object, typ: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    """``value`` converted to ``typ``; else every problem in it is added to
    ``problems`` and what could be decoded is returned: a table with its bad
    keys at their defaults, a list whose items all decoded, or ``_BAD``."""
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        first = _where(key, exc, value)
    struct = _struct_in(typ)
    known = len(problems)
    if struct is not None and isinstance(value, dict):
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
        good: dict[str, object] = {}
        whole = True
        for name, item in value.items():
            field = fields.get(name)
            if field is None:
                problems.append((f"{key}.{name}", "unknown key"))
                continue
            decoded = _decode(item, field.type, f"{key}.{name}", problems)
            if decoded is _BAD:
                whole = whole and not field.required
            else:
                good[field.name] = decoded
        for name, field in fields.items():
            if field.required and name not in value:
                problems.append((f"{key}.{name}", "required key is missing"))
                whole = False
        if whole and len(problems) > known:
            return struct(**good)
    elif typing.get_origin(typ) is list and isinstance(value, list):
        (item_type,) = typing.get_args(typ)
        items = [_decode(item, item_type, f"{key}[{i}]", problems) for i, item in enumerate(value)]
        if len(problems) > known:
            return _BAD if any(item is _BAD for item in items) else items
    if len(problems) == known:
        problems.append(first)  # not found key by key (a rule of the whole table): msgspec's own word
    return _BAD


def _reported(problems: list[tuple[str, str]], *keys: str) -> bool:
    """Whether a problem was already named for one of ``keys`` or inside it."""
    return any(k == key or k.startswith((key + ".", key + "[")) for k, _ in problems for key in keys)


def _listed(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _standard_secret_ok(secret: bytes) -> bool:
    try:
        return bool(base64.b64decode(secret.removeprefix(b"whsec_"), validate=True))
    except (binascii.Error, ValueError):
        return False


def _check_listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return "port must be a number from 0 to 65535"
    return None


def _check_template(template: str) -> str | None:
    try:
        compile_template(template)
    except TemplateError as exc:
        return str(exc)
    return None


def _check_schema(ref: str) -> str | None:
    try:
        load_schema(ref)
    except (ValueError, ImportError) as exc:
        return str(exc)
    return None


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    """Decode and check a config; raises ConfigError listing every problem."""
    env = dict(os.environ) if env is None else env
    problems: list[tuple[str, str]] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"not valid TOML: {exc}")]) from None

    parts: dict[str, object] = {}
    for name, value in raw.items():
        if name in ("routes", "endpoints", "publish"):
            continue
        section = _SECTIONS.get(name)
        if section is None:
            problems.append((name, "unknown section"))
            continue
        decoded = _decode(value, section, name, problems)
        if decoded is not _BAD:
            parts[name] = decoded

    routes: dict[str, RouteConfig] = {}
    raw_routes = raw.get("routes", {})
    if not isinstance(raw_routes, dict):
        problems.append(("routes", "expected a table of routes"))
        raw_routes = {}
    for name, value in raw_routes.items():
        key = f"routes.{name}"
        if not ROUTE_RE.match(name):
            problems.append((key, "route names use letters, digits, '_', '.', '-'"))
        decoded = _decode(value, RouteConfig, key, problems)
        if decoded is not _BAD:
            routes[name] = decoded

    endpoints: dict[str, EndpointConfig] = {}
    raw_endpoints = raw.get("endpoints", {})
    if not isinstance(raw_endpoints, dict):
        problems.append(("endpoints", "expected a table of endpoints"))
        raw_endpoints = {}
    for name, value in raw_endpoints.items():
        key = f"endpoints.{name}"
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
            problems.append((key, "endpoint ids use 1-64 letters, digits, '_', '.', '-'"))
        decoded = _decode(value, EndpointConfig, key, problems)
        if decoded is not _BAD:
            endpoints[name] = decoded

    publish: dict[str, PublishConfig] = {}
    raw_publish = raw.get("publish", {})
    if not isinstance(raw_publish, dict):
        problems.append(("publish", 'expected a table of channel patterns: [publish."chat.*"]'))
        raw_publish = {}
    for pattern, value in raw_publish.items():
        key = f"publish.{pattern}"
        try:
            parse_pattern(pattern)
        except ValueError as exc:
            problems.append((key, f"{pattern!r}: {exc}"))
        decoded = _decode(value, PublishConfig, key, problems)
        if decoded is _BAD:
            continue
        publish[pattern] = decoded
        if decoded.rate is None and decoded.burst is not None and not _reported(problems, f"{key}.rate"):
            problems.append((f"{key}.burst", "burst needs rate"))
        if decoded.schema is not None:
            if ":" not in decoded.schema and not os.path.isfile(decoded.schema):
                problems.append((f"{key}.schema", f"{decoded.schema!r}: file not found"))
            elif (why := _check_schema(decoded.schema)) is not None:
                problems.append((f"{key}.schema", why))

    server: ServerConfig = parts.get("server", ServerConfig())  # type: ignore[assignment]
    if "server" in parts and (why := _check_listen(server.listen)):
        problems.append(("server.listen", f"{server.listen!r}: {why}"))
    for i, proxy in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            problems.append((f"server.trusted_proxies[{i}]", f"{proxy!r}: not an IP address or network"))

    secrets: dict[str, tuple[bytes, ...]] = {}
    for name, route in routes.items():
        key = f"routes.{name}"
        why = _check_template(route.channel)
        if why:
            problems.append((f"{key}.channel", f"{route.channel!r}: {why}"))
        found: list[bytes] = []
        if route.secret is not None and route.secret_env is not None:
            problems.append((f"{key}.secret", "give secret or secret_env, not both"))
        for value in _listed(route.secret):
            if not value:
                problems.append((f"{key}.secret", "a secret cannot be empty"))
            found.append(value.encode())
        for var in _listed(route.secret_env):
            value = env.get(var)
            if not value:
                problems.append((f"{key}.secret_env", f"environment variable {var} is not set"))
            else:
                found.append(value.encode())
        if route.verify == "standard":
            for secret in found:
                if not _standard_secret_ok(secret):
                    problems.append((f"{key}.secret", "a Standard Webhooks secret is whsec_ followed by base64"))
                    break
        if (route.verify != "none" and not found and route.secret_env is None
                and not _reported(problems, f"{key}.secret", f"{key}.secret_env")):
            problems.append((f"{key}.verify", f"{route.verify!r} needs secret or secret_env"))
        if (route.verify == "hmac-sha256" and not route.signature_header
                and not _reported(problems, f"{key}.signature_header")):
            problems.append((f"{key}.signature_header", "verify = 'hmac-sha256' needs the header that carries the signature"))
        if route.rate is None and route.burst is not None and not _reported(problems, f"{key}.rate"):
            problems.append((f"{key}.burst", "burst needs rate"))
        if route.schema is not None:
            if ":" not in route.schema and not os.path.isfile(route.schema):
                problems.append((f"{key}.schema", f"{route.schema!r}: file not found"))
            elif (why := _check_schema(route.schema)) is not None:
                problems.append((f"{key}.schema", why))
        secrets[name] = tuple(found)

    store: StoreConfig = parts.get("store", StoreConfig())  # type: ignore[assignment]
    if store.engine == "redis" and (why := files.url_problem(store.url)) is not None:
        problems.append(("store.url", why))
    if store.engine == "nats":
        raw_store = raw.get("store")
        if not (isinstance(raw_store, dict) and "url" in raw_store):
            store = parts["store"] = msgspec.structs.replace(store, url=files.NATS_URL)
        if (why := files.nats_url_problem(store.url)) is not None:
            problems.append(("store.url", why))
    if store.tls_ca is not None:
        if store.engine != "nats":
            problems.append(("store.tls_ca", 'only the nats engine takes it (redis: a rediss:// URL)'))
        elif (why := files.ca_problem(store.tls_ca)) is not None:
            problems.append(("store.tls_ca", why))
    if server.tls is not None:
        problems.extend(files.tls_problems(server.tls.cert, server.tls.key))

    auth: AuthConfig = parts.get("auth", AuthConfig())  # type: ignore[assignment]
    tokens: dict[str, tuple[str, ...]] = {}
    token_publish: dict[str, tuple[str, ...]] = {}
    for i, tc in enumerate(auth.tokens):
        key = f"auth.tokens[{i}]"
        if (tc.token is None) == (tc.token_env is None):
            if not _reported(problems, f"{key}.token", f"{key}.token_env"):
                problems.append((key, "give token or token_env (one of them)"))
            continue
        value = tc.token if tc.token is not None else env.get(tc.token_env or "")
        if not value:
            problems.append((f"{key}.token_env", f"environment variable {tc.token_env} is not set"))
            continue
        for pattern in tc.channels:
            try:
                parse_pattern(pattern)
            except ValueError:
                problems.append((f"{key}.channels", f"{pattern!r} is not a channel name or pattern"))
        for pattern in tc.publish:
            try:
                parse_pattern(pattern)
            except ValueError:
                problems.append((f"{key}.publish", f"{pattern!r} is not a channel name or pattern"))
        tokens[value] = tuple(tc.channels)
        if tc.publish:
            token_publish[value] = tuple(tc.publish)
    admin_token = None
    if auth.admin_token_env is not None:
        admin_token = env.get(auth.admin_token_env)
        if not admin_token:
            problems.append(("auth.admin_token_env", f"environment variable {auth.admin_token_env} is not set"))
    jwt_key: bytes | None = None
    jwt_is_public = False
    if auth.jwt_secret_env is not None and auth.jwt_public_key is not None:
        problems.append(("auth.jwt_public_key", "give jwt_secret_env or jwt_public_key, not both"))
    elif auth.jwt_secret_env is not None:
        value = env.get(auth.jwt_secret_env)
        if not value:
            problems.append(("auth.jwt_secret_env", f"environment variable {auth.jwt_secret_env} is not set"))
        elif len(value.encode()) < 32:
            problems.append(("auth.jwt_secret_env", "an HS256 secret needs at least 32 bytes (RFC 7518 3.2)"))
        else:
            jwt_key = value.encode()
    elif auth.jwt_public_key is not None:
        jwt_key, why = files.read_public_key(auth.jwt_public_key)
        if why is not None:
            problems.append(("auth.jwt_public_key", why))
        jwt_is_public = jwt_key is not None
    for i, origin in enumerate(auth.origins or []):
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            problems.append((f"auth.origins[{i}]", f"{origin!r}: expected scheme://host[:port], no path"))

    endpoint_secrets = _check_endpoints(parts.get("outbound", OutboundConfig()), endpoints, env,  # type: ignore[arg-type]
                                        store, problems)

    if problems:
        raise ConfigError(problems)
    return Config(routes=routes, secrets=secrets, tokens=tokens, token_publish=token_publish, admin_token=admin_token,
                  jwt_key=jwt_key, jwt_is_public=jwt_is_public, endpoints=endpoints,
                  endpoint_secrets=endpoint_secrets, publish=publish, **parts)  # type: ignore[arg-type]


def _check_endpoints(outbound: OutboundConfig, endpoints: dict[str, EndpointConfig], env: dict[str, str],
                     store: StoreConfig, problems: list[tuple[str, str]]) -> dict[str, str]:
    """The outbound endpoints' rules, and their secrets by id."""
    allow: list[addresses.Network] = []
    for i, cidr in enumerate(outbound.allow_private):
        try:
            allow += addresses.networks([cidr])
        except ValueError as exc:
            problems.append((f"outbound.allow_private[{i}]", str(exc)))
    found: dict[str, str] = {}
    for name, endpoint in endpoints.items():
        key = f"endpoints.{name}"
        why = addresses.url_problem(endpoint.url, outbound.https_only, allow)
        if why:
            problems.append((f"{key}.url", f"{endpoint.url!r}: {why}"))
        if not endpoint.channels:
            problems.append((f"{key}.channels", "name at least one channel or pattern"))
        for i, pattern in enumerate(endpoint.channels):
            try:
                parse_pattern(pattern)
            except ValueError as exc:
                problems.append((f"{key}.channels[{i}]", f"{pattern!r}: {exc}"))
        if (endpoint.secret is None) == (endpoint.secret_env is None):
            problems.append((f"{key}.secret", "give secret or secret_env (one of them)"))
            continue
        value = endpoint.secret if endpoint.secret is not None else env.get(endpoint.secret_env or "")
        if not value:
            problems.append((f"{key}.secret_env", f"environment variable {endpoint.secret_env} is not set"))
            continue
        try:
            whsec.decode(value)
        except whsec.SecretError as exc:
            problems.append((f"{key}.secret" if endpoint.secret is not None else f"{key}.secret_env", str(exc)))
            continue
        if endpoint.since not in ("now", ""):
            ok = endpoint.since.isdigit() if store.engine != "redis" else bool(
                re.match(r"^\d+-\d+$", endpoint.since))
            if not ok:
                problems.append((f"{key}.since", f"{endpoint.since!r}: \"now\", \"\" or an event id of this store"))
        found[name] = value
    return found


def load(path: str, env: dict[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("(file)", f"{path} is not UTF-8")]) from None
    return parse(text, env)
