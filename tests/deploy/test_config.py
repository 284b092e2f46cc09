"""deploy/pollcast.toml: valid once its environment is set, and holding no secret itself."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from gateway.config import load_config
from gateway.exceptions import ConfigError
from gateway.providers import adapter_class
from tests.deploy.production import (
    DEPLOY,
    PRODUCTION_TOML,
    REPO,
    config_env_references,
    env_references,
    production_env,
)

PROVIDER_KINDS = {"ailab", "aholo", "tryon", "genpic", "videoproc"}
# Provider settings that are addresses, not credentials.
ADDRESS_FIELDS = {"base_url", "oss_base"}


def test_check_config_accepts_the_production_file() -> None:
    env = production_env()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in config_env_references(PRODUCTION_TOML.read_text())
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "--config", str(PRODUCTION_TOML)],
        env={**inherited, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "backend: redis   auth: token" in result.stdout
    for kind in PROVIDER_KINDS:
        assert f"provider {kind} ({kind})" in result.stdout
    output = result.stdout + result.stderr
    assert not [v for v in env.values() if v in output]  # no secret echoed back


def test_production_settings() -> None:
    config = load_config(PRODUCTION_TOML, env=production_env())
    assert config.auth.mode == "token"
    assert config.server.log_format == "json"
    assert config.server.host == "0.0.0.0" and config.server.port == 8000
    assert config.backend.kind == "redis"
    assert config.server.cors_origins and all(
        o.startswith("https://") for o in config.server.cors_origins
    )
    assert {p.kind for p in config.providers.values()} == PROVIDER_KINDS
    assert set(config.providers) == PROVIDER_KINDS  # provider names as the demo and docs use


@pytest.mark.parametrize("name", sorted(production_env()))
def test_every_variable_without_a_default_is_required(name: str) -> None:
    env = production_env()
    del env[name]
    with pytest.raises(ConfigError, match=f"environment variable {name} is not set"):
        load_config(PRODUCTION_TOML, env=env)


def _env_only(value: object) -> bool:
    """Exactly one ``${NAME}`` with no default: the value lives only in the environment."""
    return (
        isinstance(value, str)
        and value.startswith("${")
        and env_references(value) == {value[2:-1]: False}
    )


def test_credentials_come_only_from_the_environment() -> None:
    raw = tomllib.loads(PRODUCTION_TOML.read_text())
    assert raw["auth"]["api_keys"] and all(_env_only(k) for k in raw["auth"]["api_keys"])
    assert _env_only(raw["auth"]["token_secret"])
    assert _env_only(raw["backend"]["url"])  # may carry the Redis password
    for name, table in raw["providers"].items():
        fields = set(adapter_class(table["kind"]).Settings.__struct_fields__) - ADDRESS_FIELDS
        for field in fields:
            assert _env_only(table[field]), f"providers.{name}.{field} = {table[field]!r}"


def test_env_example_lists_every_variable() -> None:
    listed = {
        line.partition("=")[0].strip()
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert set(config_env_references(PRODUCTION_TOML.read_text())) <= listed


def test_provider_variables_are_named_kind_field() -> None:
    # One convention for every provider (AHOLO_APP_SECRET, TRYON_OSS_BASE, ...), so the
    # Secret, .env.example and the tests derive the names instead of listing them.
    raw = tomllib.loads(PRODUCTION_TOML.read_text())
    for name, table in raw["providers"].items():
        for field in adapter_class(table["kind"]).Settings.__struct_fields__:
            expected = f"{table['kind']}_{field}".upper()
            assert list(env_references(table[field])) == [expected], f"providers.{name}.{field}"
