"""The settings schema of a declarative provider: what its ``[providers.NAME]`` table holds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.providers._reply import BaseUrl
from gateway.providers.signing import SignSettings

__all__ = [
    "ApiErrorMapping",
    "BatchSettings",
    "DeclarativeSettings",
    "ErrorLiteral",
    "ErrorMapping",
    "FieldMapping",
    "PathSpec",
    "ReplySettings",
    "RequestSettings",
    "ResultMapping",
    "StateMapping",
    "StateRule",
]

PathSpec = str | list[str]
"""One path, or paths tried in order."""


class BatchSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Many ids in one request: as a JSON array (``json``) or a repeated query parameter."""

    mode: Literal["json", "query"]
    size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    param: str | None = None  # mode "query": the parameter repeated once per id


class RequestSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    method: Literal["GET", "POST", "PUT"] = "GET"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    query: dict[str, str] = msgspec.field(default_factory=dict)
    json: Any = None  # a JSON body template: string leaves are templates
    body: str | None = None  # a raw body template (instead of json)
    batch: BatchSettings | None = None
    sign: SignSettings | None = None  # gateway/providers/signing.py


class ReplySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tasks: str = "$"
    id: str | None = None
    not_found: list[int] = msgspec.field(default_factory=list)


class StateRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``state`` whenever ``when`` (a condition on the task object) holds; before ``values``."""

    when: str
    state: str


class ErrorLiteral(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: str
    message: str


class StateMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: PathSpec
    values: dict[str, str]  # upstream value (as text) → normalized state
    rules: list[StateRule] = msgspec.field(default_factory=list)  # tried first, in order
    messages: dict[str, str] = msgspec.field(default_factory=dict)  # value → message
    errors: dict[str, ErrorLiteral] = msgspec.field(default_factory=dict)  # value → error


class ResultMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    urls: PathSpec | None = None  # default: the values of files
    files: str | dict[str, PathSpec] | None = None  # a path to an object, or name → path
    meta: dict[str, PathSpec] = msgspec.field(default_factory=dict)
    base_url: str = "{base}"  # relative paths are resolved against this


class ErrorMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: PathSpec | None = None
    message: PathSpec | None = None


class FieldMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state: StateMapping
    progress: PathSpec | None = None
    position: PathSpec | None = None
    position_in: list[str] | None = None  # the states position is read in (default: all)
    message: PathSpec | None = None
    result: ResultMapping = ResultMapping()
    error: ErrorMapping = ErrorMapping()
    upstream: dict[str, PathSpec] | None = None  # default: {state path: state value}


class ApiErrorMapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    when: str
    code: PathSpec | None = None
    message: PathSpec | None = None
    auth: str | None = None
    rate_limited: str | None = None
    not_found: str | None = None  # → the upstream does not know the task (state unknown)
    task: str | None = None
    task_state: str = "failed"
    upstream: dict[str, PathSpec] = msgspec.field(default_factory=dict)


class DeclarativeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    request: RequestSettings
    map: FieldMapping
    reply: ReplySettings = ReplySettings()
    api_error: ApiErrorMapping | None = None
    cost_per_call: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 0.0
    secrets: dict[str, str] = msgspec.field(default_factory=dict)  # {secrets.NAME}
