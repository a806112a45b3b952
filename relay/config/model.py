"""The config's shape: frozen msgspec Structs, one per TOML table.

Unknown keys are errors (``forbid_unknown_fields``), constraints are
``Meta`` annotations, and defaults are the contract's. What the loader
(``load.py``) adds after decoding - secrets read from the environment, the
subscriber tokens, the admin token, the JWT key - are fields of ``Config``
too, so nothing after the loader reads the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from ..core.verify import SCHEMES

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]

class _Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class TLSConfig(_Section):
    cert: str
    key: str


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: PositiveInt = 1_048_576
    max_connections: PositiveInt = 10_000
    shutdown_grace: PositiveFloat = 10.0
    ping_interval: PositiveFloat = 20.0
    # Proxies (addresses or networks) whose X-Forwarded-For is believed for
    # the client address in logs. Empty: only the socket's peer is logged.
    trusted_proxies: list[str] = []
    tls: TLSConfig | None = None


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class StoreConfig(_Section):
    engine: Literal["sqlite", "memory", "redis", "nats"] = "sqlite"
    path: str = "var/relay.db"
    url: str = "redis://127.0.0.1:6379/0"  # nats: nats://127.0.0.1:4222 unless given
    prefix: str = "relay:"
    retention: PositiveInt = 100_000
    retention_age: PositiveFloat = 86_400.0
    tls_ca: str | None = None  # nats: a PEM file of the CA that signed the server's certificate


class DeliveryConfig(_Section):
    queue: PositiveInt = 1024
    slow_consumer: Literal["disconnect", "drop"] = "disconnect"


class TokenConfig(_Section):
    channels: list[str]
    token_env: str | None = None
    token: str | None = None
    publish: list[str] = []  # channels and patterns it may publish to (contract section 10)


class AuthConfig(_Section):
    tokens: list[TokenConfig] = []
    jwt_secret_env: str | None = None
    jwt_public_key: str | None = None
    origins: list[str] | None = None
    admin_token_env: str | None = None


class RouteConfig(_Section):
    channel: str = "{route}"
    verify: Literal[SCHEMES] = "none"  # type: ignore[valid-type]
    # One secret, or several while a sender rotates them (any may match).
    secret_env: str | list[str] | None = None
    secret: str | list[str] | None = None
    schema: str | None = None
    rate: PositiveFloat | None = None
    burst: PositiveInt | None = None
    forward_headers: list[str] = []
    # Default: ["json"], and ["json", "form"] for the slack preset (slash
    # commands and interactivity post forms); see ``accepted``.
    accept: list[Literal["json", "form"]] | None = None
    signature_header: str | None = None
    signature_encoding: Literal["hex", "base64"] = "hex"
    signature_prefix: str = ""
    dedupe_header: str | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        if self.accept is not None:
            return tuple(self.accept)
        return ("json", "form") if self.verify == "slack" else ("json",)


class OutboundConfig(_Section):
    """Defaults for every outbound endpoint (contract section 9)."""

    timeout: PositiveFloat = 15.0
    retry: Annotated[tuple[Annotated[float, Meta(ge=0)], ...], Meta(min_length=1, max_length=100)] = (
        0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    max_in_flight: PositiveInt = 8
    max_connections: PositiveInt = 512
    https_only: bool = False
    allow_private: list[str] = []
    disable_after: PositiveFloat = 432000.0


class PublishConfig(_Section):
    """``[publish."pattern"]``: what subscribers may publish on matching channels."""

    schema: str | None = None
    max_bytes: PositiveInt = 65536
    rate: PositiveFloat | None = None  # publishes per second, per connection
    burst: PositiveInt | None = None


class EndpointConfig(_Section):
    url: str
    channels: list[str]
    secret_env: str | None = None
    secret: str | None = None
    format: Literal["data", "envelope"] = "data"
    ordered: bool = False
    rate: PositiveFloat | None = None
    headers: dict[str, str] = {}
    since: str = "now"


class Config(Struct, frozen=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    store: StoreConfig = StoreConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    auth: AuthConfig = AuthConfig()
    routes: dict[str, RouteConfig] = {}
    outbound: OutboundConfig = OutboundConfig()
    endpoints: dict[str, EndpointConfig] = {}
    publish: dict[str, PublishConfig] = {}
    # Filled in by ``parse``: secrets read from the environment, by route name;
    # subscriber tokens (value -> channel patterns); the admin token (read
    # once, here: nothing else looks at the environment for it).
    secrets: dict[str, tuple[bytes, ...]] = {}
    tokens: dict[str, tuple[str, ...]] = {}
    token_publish: dict[str, tuple[str, ...]] = {}  # token value -> what it may publish to
    admin_token: str | None = None
    endpoint_secrets: dict[str, str] = {}  # endpoint id -> its whsec_ secret
    jwt_key: bytes | None = None  # the HS256 secret, or the PEM public key
    jwt_is_public: bool = False

    @property
    def admin_guard(self) -> bytes | None:
        """The token the admin views require: None when none is configured;
        b"" when its variable gave nothing, which locks them rather than
        opening them (``parse`` refuses such a config anyway)."""
        if self.auth.admin_token_env is None:
            return None
        return (self.admin_token or "").encode()
