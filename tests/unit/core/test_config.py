"""Configuration: TOML → validated Config; every error names the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    AuthConfig,
    Config,
    ServerConfig,
    load_config,
    parse_config,
)
from gateway.exceptions import ConfigError
from gateway.providers.aholo import AholoAdapter
from gateway.providers.tryon import TryonAdapter
from gateway.providers.videoproc import VideoprocAdapter

NO_ENV: dict[str, str] = {}


def _minimal(**provider: Any) -> dict[str, Any]:
    return {"providers": {"vp": {"kind": "videoproc", "base_url": "http://x", **provider}}}


def _error(data: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, NO_ENV if env is None else env)
    return info.value


# --- valid documents -------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(_minimal(), NO_ENV)
    assert config.server == ServerConfig()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.backend.kind == "local"
    assert config.auth.mode == "open"
    assert list(config.providers) == ["vp"]
    provider = config.providers["vp"]
    assert (provider.name, provider.kind) == ("vp", "videoproc")
    assert provider.adapter_class() is VideoprocAdapter
    assert provider.settings == VideoprocAdapter.Settings(base_url="http://x")


def test_empty_document_is_a_config_without_providers() -> None:
    assert parse_config({}, NO_ENV) == Config()


def test_sections_are_read() -> None:
    config = parse_config(
        {
            **_minimal(),
            "server": {"host": "0.0.0.0", "port": 9000, "log_format": "json"},
            "backend": {"kind": "redis", "url": "redis://r:6379/1", "prefix": "pc"},
            "auth": {"mode": "token", "api_keys": ["k1"], "token_secret": "s3cret"},
            "polling": {"grace_s": 5, "deadline_s": 60},
        },
        NO_ENV,
    )
    assert (config.server.host, config.server.port, config.server.log_format) == (
        "0.0.0.0",
        9000,
        "json",
    )
    assert (config.backend.kind, config.backend.url, config.backend.prefix) == (
        "redis",
        "redis://r:6379/1",
        "pc",
    )
    assert config.auth == AuthConfig(mode="token", api_keys=["k1"], token_secret="s3cret")
    assert (config.polling.grace_s, config.polling.deadline_s) == (5.0, 60.0)


def test_backend_cluster_is_read() -> None:
    doc = {"backend": {"kind": "redis", "url": "redis://r:6379/0", "cluster": True}}
    assert parse_config(doc, NO_ENV).backend.cluster is True
    assert parse_config({}, NO_ENV).backend.cluster is False


# --- error paths -----------------------------------------------------------


def test_unknown_section_is_named() -> None:
    err = _error({**_minimal(), "servre": {}})
    assert err.path == "servre"
    assert str(err) == "servre: unknown section"


def test_unknown_key_in_server_is_named() -> None:
    err = _error({**_minimal(), "server": {"prot": 8000}})
    assert err.path == "server.prot"
    assert "unknown key" in str(err)


def test_wrong_type_names_the_key() -> None:
    err = _error({**_minimal(), "server": {"port": "x"}})
    assert err.path == "server.port"
    assert str(err) == "server.port: Expected `int`, got `str`"


def test_section_that_is_not_a_table() -> None:
    err = _error({**_minimal(), "server": 5})
    assert err.path == "server"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("backend", "kind", "memcached"),
        ("auth", "mode", "closed"),
        ("server", "log_format", "xml"),
        ("polling", "grace_s", "soon"),
        ("auth", "api_keys", "k1"),
        ("backend", "cluster", "yes please"),
    ],
)
def test_invalid_values_in_sections_name_the_key(section: str, key: str, value: object) -> None:
    err = _error({**_minimal(), section: {key: value}})
    assert err.path == f"{section}.{key}"


def test_provider_with_unknown_kind() -> None:
    err = _error({"providers": {"vp": {"kind": "vidproc", "base_url": "http://x"}}})
    assert err.path == "providers.vp.kind"
    assert "unknown provider kind 'vidproc'" in str(err)
    assert "aholo, ailab, genpic, http, tryon, videoproc" in str(err)


@pytest.mark.parametrize("kind", [None, 3])
def test_provider_without_a_string_kind(kind: object) -> None:
    table: dict[str, object] = {"base_url": "http://x"}
    if kind is not None:
        table["kind"] = kind
    err = _error({"providers": {"vp": table}})
    assert err.path == "providers.vp.kind"
    assert "needs kind" in str(err)


def test_provider_with_an_unknown_extra_key() -> None:
    err = _error(_minimal(intervall_s=3))
    assert err.path == "providers.vp.intervall_s"
    assert "unknown key" in str(err)


def test_provider_key_of_another_adapter_is_unknown() -> None:
    # api_key belongs to ailab's settings, not videoproc's.
    err = _error(_minimal(api_key="k"))
    assert err.path == "providers.vp.api_key"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("interval_s", -1),
        ("interval_s", 0),
        ("interval_s", -0.5),
        ("max_interval_s", 0),
        ("concurrency", 0),
        ("batch_size", -1),
        ("rate_per_s", -2.5),
        ("budget_per_hour", -1),
        ("deadline_s", 0),
    ],
)
def test_non_positive_policy_values_are_rejected(key: str, value: float) -> None:
    err = _error(_minimal(**{key: value}))
    assert err.path == f"providers.vp.{key}"
    assert str(err) == f"providers.vp.{key}: must be a positive, finite number"


def test_nan_interval_is_rejected(tmp_path: Path) -> None:
    # TOML allows ``nan``; "nan <= 0" is false, so a sign test alone lets it through.
    path = tmp_path / "pollcast.toml"
    path.write_text(
        '[providers.vp]\nkind = "videoproc"\nbase_url = "http://x"\ninterval_s = nan\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, NO_ENV)
    assert info.value.path == "providers.vp.interval_s"


def test_wrong_policy_type_names_the_key() -> None:
    err = _error(_minimal(batch_size="many"))
    assert err.path == "providers.vp.batch_size"


def test_provider_settings_errors_name_the_provider() -> None:
    missing = _error({"providers": {"vp": {"kind": "videoproc"}}})
    assert missing.path.startswith("providers.vp")
    assert "base_url" in str(missing)
    bad_url = _error(_minimal(base_url="ftp://x"))
    assert bad_url.path == "providers.vp.base_url"


@pytest.mark.parametrize("name", ["Bad Name", "Ailab", "1st", "a" * 33, "ailab\n"])
def test_invalid_provider_name_is_rejected(name: str) -> None:
    err = _error({"providers": {name: {"kind": "videoproc", "base_url": "http://x"}}})
    assert err.path == f"providers.{name}"
    assert "must match" in str(err)


def test_provider_that_is_not_a_table() -> None:
    err = _error({"providers": {"vp": "videoproc"}})
    assert err.path == "providers.vp"
    assert "must be a table" in str(err)


def test_providers_that_is_not_a_table() -> None:
    err = _error({"providers": ["vp"]})
    assert err.path == "providers"


def test_token_mode_needs_a_token_secret() -> None:
    err = _error({**_minimal(), "auth": {"mode": "token"}})
    assert err.path == "auth.token_secret"
    assert "token_secret" in str(err)
    empty = _error({**_minimal(), "auth": {"mode": "token", "token_secret": "${S:-}"}})
    assert empty.path == "auth.token_secret"


# --- environment interpolation ---------------------------------------------


def test_env_interpolation_uses_the_given_mapping() -> None:
    config = parse_config(
        {
            **_minimal(base_url="http://${HOST}:${PORT}"),
            "auth": {"api_keys": ["${KEY}"], "token_secret": "${SECRET}"},
        },
        {"HOST": "video.local", "PORT": "8080", "KEY": "k-123", "SECRET": "s-456"},
    )
    assert config.providers["vp"].settings.base_url == "http://video.local:8080"  # type: ignore[attr-defined]
    assert config.auth.api_keys == ["k-123"]
    assert config.auth.token_secret == "s-456"


def test_missing_env_variable_names_the_path() -> None:
    err = _error(_minimal(base_url="${VIDEO_URL}"))
    assert err.path == "providers.vp.base_url"
    assert str(err) == "providers.vp.base_url: environment variable VIDEO_URL is not set"


def test_missing_env_variable_in_a_list_names_the_index() -> None:
    err = _error({**_minimal(), "auth": {"api_keys": ["k0", "${POLLCAST_API_KEY}"]}})
    assert err.path == "auth.api_keys[1]"
    assert "POLLCAST_API_KEY" in str(err)


def test_env_default_applies_only_when_unset() -> None:
    data = _minimal(base_url="${VIDEO_URL:-http://fallback:1}")
    assert parse_config(data, NO_ENV).providers["vp"].settings.base_url == "http://fallback:1"  # type: ignore[attr-defined]
    set_env = {"VIDEO_URL": "http://set:2"}
    assert parse_config(data, set_env).providers["vp"].settings.base_url == "http://set:2"  # type: ignore[attr-defined]
    # Set but empty is still set: the empty value is used (and then fails validation).
    assert _error(data, {"VIDEO_URL": ""}).path == "providers.vp.base_url"


def test_env_values_are_not_interpolated_again() -> None:
    config = parse_config({**_minimal(), "auth": {"api_keys": ["${KEY}"]}}, {"KEY": "${OTHER}"})
    assert config.auth.api_keys == ["${OTHER}"]


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLCAST_TEST_VIDEO_URL", "http://from-env")
    config = parse_config(_minimal(base_url="${POLLCAST_TEST_VIDEO_URL}"))
    assert config.providers["vp"].settings.base_url == "http://from-env"  # type: ignore[attr-defined]


# --- load_config -----------------------------------------------------------


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "pollcast.toml"
    path.write_text(
        '[server]\nport = 8123\n\n[providers.videoproc]\nkind = "videoproc"\n'
        'base_url = "${VP_URL}"\ninterval_s = 3\n',
        encoding="utf-8",
    )
    config = load_config(path, {"VP_URL": "http://v"})
    assert config.server.port == 8123
    assert config.providers["videoproc"].policy.interval_s == 3.0


def test_load_config_on_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, NO_ENV)
    assert info.value.path == str(path)
    assert "cannot read config file" in str(info.value)


def test_load_config_on_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, NO_ENV)
    assert info.value.path == str(path)
    assert "not valid TOML" in str(info.value)


def test_load_config_reports_key_paths_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pollcast.toml"
    path.write_text('[server]\nport = "eighty"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, NO_ENV)
    assert info.value.path == "server.port"


# --- runtimes and secrets --------------------------------------------------


def _three_providers() -> dict[str, Any]:
    return {
        "providers": {
            "vp": {"kind": "videoproc", "base_url": "http://v", "interval_s": 3},
            "tr": {
                "kind": "tryon",
                "base_url": "http://t",
                "open_id": "OPENID-1",
                "api_key": "TRYON-KEY",
                "oss_base": "http://oss",
                "budget_per_hour": 1.5,
            },
            "ah": {
                "kind": "aholo",
                "base_url": "http://a",
                "app_key": "AHOLO-KEY",
                "app_secret": "AHOLO-SECRET",
                "appuid": "AHOLO-UID",
                "batch_size": 20,
            },
        },
        "polling": {"deadline_s": 600},
        "auth": {"mode": "token", "api_keys": ["API-KEY", ""], "token_secret": "TOKEN-SECRET"},
    }


def test_runtimes_merge_adapter_defaults_with_overrides() -> None:
    runtimes = parse_config(_three_providers(), NO_ENV).runtimes()
    assert set(runtimes) == {"vp", "tr", "ah"}

    vp = runtimes["vp"]
    assert vp.name == "vp"
    assert vp.kind == "videoproc"
    assert vp.policy.base_s == 3.0  # override
    assert vp.policy.max_s == VideoprocAdapter.defaults.max_interval_s
    assert vp.batch_size == VideoprocAdapter.defaults.batch_size == 1
    assert vp.deadline_s == 600.0  # the [polling] default
    assert vp.budget_per_hour is None

    tr = runtimes["tr"]
    assert tr.policy.base_s == TryonAdapter.defaults.interval_s == 60.0
    assert tr.cost_per_call == 0.1
    assert tr.budget_per_hour == 1.5
    assert (tr.concurrency, tr.rate_per_s) == (2, 2.0)

    ah = runtimes["ah"]
    assert AholoAdapter.defaults.batch_size == 100
    assert ah.batch_size == 20  # override
    assert ah.adapter.batch_size == 20


def test_runtime_batch_size_defaults_to_the_adapter() -> None:
    data = _three_providers()
    del data["providers"]["ah"]["batch_size"]
    assert parse_config(data, NO_ENV).runtimes()["ah"].batch_size == 100


def test_interval_override_above_the_adapter_max_raises_the_max() -> None:
    runtime = parse_config(_minimal(interval_s=60), NO_ENV).runtimes()["vp"]
    assert runtime.policy.base_s == 60.0
    assert runtime.policy.max_s >= runtime.policy.base_s


def test_secret_values_include_provider_credentials_and_our_own() -> None:
    secrets = parse_config(_three_providers(), NO_ENV).secret_values()
    assert set(secrets) == {
        "API-KEY",
        "TOKEN-SECRET",
        "OPENID-1",
        "TRYON-KEY",
        "AHOLO-KEY",
        "AHOLO-SECRET",
        "AHOLO-UID",
    }
    assert "" not in secrets
    assert "http://v" not in secrets
