"""The production configuration and the environment it reads."""

from __future__ import annotations

import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

__all__ = [
    "DEPLOY",
    "PRODUCTION_TOML",
    "REPO",
    "config_env_references",
    "env_references",
    "production_env",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PRODUCTION_TOML = DEPLOY / "pollcast.toml"

# gateway/config.py's ${NAME} / ${NAME:-default} syntax.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def env_references(text: str) -> dict[str, bool]:
    """Every ``${NAME}`` in a string: name → whether it has a default."""
    found: dict[str, bool] = {}
    for match in _ENV_REF.finditer(text):
        found[match.group(1)] = found.get(match.group(1), False) or match.group(2) is not None
    return found


def config_env_references(toml_text: str) -> dict[str, bool]:
    """The ``${NAME}`` references in a TOML document's values (comments don't count)."""
    found: dict[str, bool] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for name, has_default in env_references(value).items():
                found[name] = found.get(name, False) or has_default
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(tomllib.loads(toml_text))
    return found


def production_env(text: str | None = None) -> dict[str, str]:
    """A plausible value for every variable the file needs (those without a default).

    Secrets are fresh random strings, long enough for any length rule
    (an HS256 token secret wants 32+ bytes).
    """
    text = PRODUCTION_TOML.read_text() if text is None else text
    env: dict[str, str] = {}
    for name, has_default in config_env_references(text).items():
        if has_default:
            continue
        if name.endswith("REDIS_URL"):
            env[name] = "redis://redis.internal.example:6379/0"
        elif name.endswith(("_URL", "_BASE")):
            env[name] = f"https://{name.lower().replace('_', '-')}.example.com/"
        else:
            env[name] = secrets.token_urlsafe(48)
    return env
