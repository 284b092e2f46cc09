"""Configuration: ``pollcast.toml`` → typed, validated :class:`Config`.

Every string may use ``${NAME}`` (or ``${NAME:-default}``) to read the
environment, so secrets stay out of the file. Every error names the key
path (``providers.ailab.api_key: environment variable AILAB_API_KEY is not
set``) and is raised before anything starts.
"""

from __future__ import annotations

import math
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec

from gateway.core.model import TaskKey
from gateway.exceptions import ConfigError, InvalidTaskKey
from gateway.poller.provider import ProviderRuntime
from gateway.poller.upstream import HttpSettings, ssl_context
from gateway.providers import adapter_class, plugin_of
from gateway.providers.base import Adapter, PolicySettings
from gateway.redaction import Redactor
from gateway.webhooks.settings import WebhooksConfig
from gateway.webhooks.signing import decode_secret

__all__ = [
    "AuthConfig",
    "BackendConfig",
    "Config",
    "PollingConfig",
    "ProviderConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
]


# NaN and infinity never pass these (msgspec compares, and NaN compares false).
Positive = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    heartbeat_s: Positive = 15.0  # SSE ": ping" comment interval
    # SSE "retry:" sent at the start of each stream
    retry_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 3000
    max_tasks_per_stream: Count = 100  # GET /v1/events?tasks=...
    max_tasks_per_ws: Count = 100  # subscriptions per WebSocket connection
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256)] = 65536  # WebSocket client frame size
    ws_frames_per_s: Positive = 50.0  # client frames per second per connection
    cors_origins: list[str] = msgspec.field(default_factory=list)
    queue_size: Annotated[int, msgspec.Meta(ge=8)] = 256  # per-subscriber queue bound
    shutdown_timeout_s: Positive = 5.0  # SIGTERM: streams get a last notice within this
    ws_ping_s: Positive = 20.0
    log_format: Literal["text", "json"] = "text"
    # Abuse limits (gateway/web/connection.py, limits.py); in memory, per node.
    max_connections_per_ip: Count = 1024  # open TCP connections of one client address
    handshake_timeout_s: Positive = 10.0  # a request head must arrive within this (slowloris)
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 65536  # line + headers
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 24)] = 65536  # JSON bodies
    # "off": uvicorn's standard protocol, no direct writes (gateway/web/fastpaths.py);
    # POLLCAST_FAST_PATHS=off does the same.
    fast_paths: Literal["auto", "off"] = "auto"


class BackendConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["local", "redis"] = "local"
    path: str = "pollcast-state.db"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "pollcast"
    history_limit: Count = 256
    # local: finished tasks' snapshots kept in memory (the rest are read from the file)
    snapshot_cache: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 4096
    lease_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0  # redis: claim lease
    # redis: connection pool size (blocking pool, bounded wait)
    max_connections: Annotated[int, msgspec.Meta(ge=2, le=100_000)] = 1000
    # redis: each provider's schedule in this many shards (hash tags), spread
    # over a cluster's masters; every node must use the same number
    schedule_shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    # redis: a Redis Cluster (as a ``redis+cluster://`` URL says too); url names a seed node
    cluster: bool = False


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Literal["open", "token"] = "open"
    api_keys: list[str] = msgspec.field(default_factory=list)
    token_secret: str | None = None  # signs subscriber tokens (HS256; 32+ random bytes)
    # Still accepted when verifying: tokens signed before a rotation live out their ttl.
    previous_token_secrets: list[str] = msgspec.field(default_factory=list)
    token_ttl_s: Positive = 3600.0  # lifetime of a token minted by POST /v1/tasks
    max_token_ttl_s: Positive = 86400.0  # the longest POST /v1/tokens may ask for
    # Per principal (an API key; the client address in open mode):
    max_watched_tasks: Count = 10000  # tasks registered with POST /v1/tasks and not yet ended
    registrations_per_s: Positive = 100.0  # POST /v1/tasks, sustained …
    registration_burst: Count = 1000  # … and in a burst


class PollingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # stop polling a task nobody follows after this long
    grace_s: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 30.0
    deadline_s: Positive = 7200.0  # give up on a task (expired, gateway_deadline)
    # batch providers: wait this long after a task falls due
    coalesce_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.1


class ProviderConfig(msgspec.Struct, frozen=True):
    name: str
    kind: str
    settings: msgspec.Struct
    policy: PolicySettings
    http: HttpSettings = HttpSettings()

    def adapter_class(self) -> type[Adapter]:
        return adapter_class(self.kind)


class Config(msgspec.Struct, frozen=True):
    server: ServerConfig = ServerConfig()
    backend: BackendConfig = BackendConfig()
    auth: AuthConfig = AuthConfig()
    polling: PollingConfig = PollingConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)

    def runtimes(self) -> dict[str, ProviderRuntime]:
        return {name: self.runtime(name) for name in self.providers}

    def runtime(self, name: str) -> ProviderRuntime:
        p = self.providers[name]
        return ProviderRuntime.build(
            name,
            p.adapter_class(),
            p.settings,
            p.policy,
            default_deadline_s=self.polling.deadline_s,
            http=p.http,
        )

    def secret_values(self) -> list[str]:
        """Credential values (upstream and our own) that must never be emitted."""
        found = [v for v in self.auth.api_keys if v]
        if self.auth.token_secret:
            found.append(self.auth.token_secret)
        found.extend(v for v in self.auth.previous_token_secrets if v)
        if self.webhooks.secret:
            found.append(self.webhooks.secret)
        for runtime in self.runtimes().values():
            found.extend(v for v in runtime.adapter.secret_values() if v)
        for provider in self.providers.values():
            found.extend(_proxy_credentials(provider.http.proxy))
        return found


def _proxy_credentials(proxy: str | None) -> list[str]:
    """The user and password of a proxy URL, as written and decoded."""
    if not proxy:
        return []
    parts = urlsplit(proxy)
    found = [v for v in (parts.username, parts.password) if v]
    return found + [unquote(v) for v in found if unquote(v) != v]


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", path=path)

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")


T = TypeVar("T")


def _convert(data: Any, kind: type[T], path: str) -> T:
    """msgspec.convert with the error's ``$.a.b`` turned into ``path.a.b``."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _MSGSPEC_PATH.search(text)
        where = path
        if match:
            where = path + match.group(1)
            text = text[: match.start()]
        if text.startswith("Object missing required field"):
            field = text.split("`")[1] if "`" in text else ""
            raise ConfigError("required key is missing", path=f"{where}.{field}") from exc
        if text.startswith("Object contains unknown field"):
            field = text.split("`")[1] if "`" in text else ""
            raise ConfigError("unknown key", path=f"{where}.{field}".lstrip(".")) from exc
        raise ConfigError(text, path=where) from exc


def _check_settings(cls: type[Adapter], settings: msgspec.Struct, path: str) -> msgspec.Struct:
    """The adapter's own checks, with the key path made absolute."""
    try:
        cls.check_settings(settings)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"{path}.{exc.path}" if exc.path else path) from exc
    except Exception as exc:
        _raise_for_plugin(cls.kind, settings, path, exc)
        raise
    return settings


def _check_http(http: HttpSettings, path: str) -> HttpSettings:
    """A provider's proxy and CA bundle, checked before anything connects."""
    if http.proxy is not None:
        where = f"{path}.proxy"
        parts = urlsplit(http.proxy)
        if parts.scheme not in ("http", "https"):
            raise ConfigError("a proxy URL starts with http:// or https://", path=where)
        if not parts.hostname:
            raise ConfigError("a proxy URL needs a host", path=where)
        try:
            parts.port  # noqa: B018 (raises on a port that is not one)
        except ValueError:
            raise ConfigError("the proxy's port is not a number in 0-65535", path=where) from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("a proxy URL has no path, query or fragment", path=where)
        if http.trust_env:
            raise ConfigError(
                "set either proxy or trust_env: with proxy set, the environment is not read",
                path=f"{path}.trust_env",
            )
    if http.ca_file is not None:
        where = f"{path}.ca_file"
        try:
            ssl_context(http.ca_file)
        except ssl.SSLError as exc:  # before OSError, of which it is one
            raise ConfigError(
                "not a PEM bundle of CA certificates (none could be loaded)", path=where
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read the CA bundle: {exc.strerror}", path=where) from exc
    return http


def _raise_for_plugin(kind: str, settings: msgspec.Struct, path: str, exc: Exception) -> None:
    """A plugin adapter's own code failed on its settings: a ConfigError naming the plugin.

    Does nothing for a built-in kind. The plugin's message is scrubbed of the
    provider's setting values, which may be credentials.
    """
    plugin = plugin_of(kind)
    if plugin is None:
        return
    values = msgspec.structs.asdict(settings).values()
    message = Redactor([v for v in values if isinstance(v, str)]).text(str(exc))
    raise ConfigError(
        f"{plugin.label} failed on this provider's settings: {type(exc).__name__}: {message}",
        path=path,
    ) from None


def _provider(name: str, table: Any, path: str) -> ProviderConfig:
    try:
        TaskKey.of(name, "x")
    except InvalidTaskKey as exc:
        raise ConfigError(exc.message, path=path) from exc
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=path)
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ConfigError('a provider needs kind = "ailab" | "aholo" | ...', path=f"{path}.kind")
    try:
        cls = adapter_class(kind)
    except ConfigError as exc:
        raise ConfigError(str(exc), path=f"{path}.kind") from exc
    adapter_fields = set(cls.Settings.__struct_fields__)
    http_fields = set(HttpSettings.__struct_fields__) - adapter_fields
    settings = {k: v for k, v in table.items() if k in adapter_fields}
    http = {k: v for k, v in table.items() if k in http_fields}
    policy = {
        k: v
        for k, v in table.items()
        if k not in adapter_fields and k not in http_fields and k != "kind"
    }
    provider = ProviderConfig(
        name=name,
        kind=kind,
        settings=_check_settings(cls, _convert(settings, cls.Settings, path), path),
        policy=_convert(policy, PolicySettings, path),
        http=_check_http(_convert(http, HttpSettings, path), path),
    )
    for key, value in msgspec.structs.asdict(provider.policy).items():
        if isinstance(value, int | float) and (not math.isfinite(value) or value <= 0):
            raise ConfigError("must be a positive, finite number", path=f"{path}.{key}")
    typical = provider.policy.typical_duration_s
    if isinstance(typical, tuple) and not (
        all(math.isfinite(v) and v > 0 for v in typical) and typical[0] <= typical[1]
    ):
        raise ConfigError(
            "must be [low, high]: positive, finite, low <= high",
            path=f"{path}.typical_duration_s",
        )
    return provider


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed TOML document.

    Raises:
        ConfigError: naming the key path and what is wrong with it.
    """
    data = _interpolate(dict(data), os.environ if env is None else env, "")
    unknown = set(data) - {"server", "backend", "auth", "polling", "providers", "webhooks"}
    if unknown:
        raise ConfigError("unknown section", path=sorted(unknown)[0])
    providers_raw = data.get("providers", {})
    if not isinstance(providers_raw, dict):
        raise ConfigError("must be a table of providers", path="providers")
    providers = {
        name: _provider(name, table, f"providers.{name}") for name, table in providers_raw.items()
    }
    config = Config(
        server=_convert(data.get("server", {}), ServerConfig, "server"),
        backend=_convert(data.get("backend", {}), BackendConfig, "backend"),
        auth=_convert(data.get("auth", {}), AuthConfig, "auth"),
        polling=_convert(data.get("polling", {}), PollingConfig, "polling"),
        webhooks=_convert(data.get("webhooks", {}), WebhooksConfig, "webhooks"),
        providers=providers,
    )
    _check_cors_origins(config.server.cors_origins)
    if config.webhooks.secret is not None:
        try:
            decode_secret(config.webhooks.secret)
        except ValueError as exc:
            raise ConfigError(str(exc), path="webhooks.secret") from exc
    if config.auth.mode == "token" and not config.auth.token_secret:
        raise ConfigError("token mode needs a token_secret", path="auth.token_secret")
    for name, provider in config.providers.items():
        try:
            config.runtime(name)
        except ConfigError:
            raise
        except Exception as exc:
            _raise_for_plugin(provider.kind, provider.settings, f"providers.{name}", exc)
            if not isinstance(exc, ValueError | TypeError):
                raise
            raise ConfigError(str(exc), path="providers") from exc
    return config


# scheme://host[:port], optionally "*." before the host for all of its subdomains.
_CORS_ORIGIN = re.compile(
    r"https?://(\[[0-9A-Fa-f:.]+\]|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:[0-9]{1,5})?"
)


def _check_cors_origins(origins: list[str]) -> None:
    """Refuse origins that would let any site read a user's streams.

    The gateway allows credentials on cross-origin requests (the
    ``pollcast_token`` cookie), and a CORS answer with credentials names the
    asking origin: with ``"*"`` (or a pattern such as ``"https://*"``) every
    page on the web could read what the cookie grants.

    Raises:
        ConfigError: at ``server.cors_origins``, saying what to write instead.
    """
    for origin in origins:
        if origin == "*":
            raise ConfigError(
                '"*" would let every web site read your users\' streams with their '
                "pollcast_token cookie (credentials are allowed cross-origin); list the "
                'origins of the pages that use the gateway, e.g. ["https://app.example.com"]',
                path="server.cors_origins",
            )
        if not _CORS_ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{origin!r} is not an origin: write scheme://host[:port] (no path, no "
                'trailing slash), or "https://*.example.com" for all subdomains of a host',
                path="server.cors_origins",
            )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid (with the key path).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from exc
    return parse_config(data, env)
