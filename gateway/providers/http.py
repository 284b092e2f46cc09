"""Declarative providers: ``kind = "http"``, an upstream described entirely in ``pollcast.toml``.

For a status API whose calls need no code — a URL template, some headers or
query keys, a JSON body, a signature — and whose replies hold each task's status in a
field. Everything is data: templates use a fixed set of placeholders,
:mod:`~gateway.providers.fieldpath` paths say where values are, and
:mod:`~gateway.providers.conditions` say when a reply is an API error.
Nothing in the configuration is executed — signatures included: ``request.sign``
declares them as data (:mod:`~gateway.providers.signing`).

The provider table (``[providers.NAME]``)::

    kind = "http"
    base_url = "https://api.example.com"     # {base} in templates
    cost_per_call = 0.0                      # optional; with budget_per_hour
    interval_s = 5                           # + any policy key (interval_s, batch_size…)

    [providers.NAME.secrets]                 # {secrets.NAME} in templates (not in the URL path)
    app_secret = "${APP_SECRET}"

    [providers.NAME.request]
    method = "GET"                           # GET | POST | PUT
    url = "{base}/status/{task_id}"          # {task_id} is percent-encoded here
    headers = { "x-api-key" = "${KEY}" }
    query = { id = "{task_id}" }
    json = { task_id = "{task_id}" }         # or body = "raw {task_id}"; POST/PUT only
    batch = { mode = "json", size = 50 }     # ids as a JSON array ("{task_ids}" leaf, or
                                             # the whole body); or mode = "query", param = "ids"

    [providers.NAME.request.sign]            # see gateway/providers/signing.py
    algorithm = "md5"                        # md5 | sha1 | sha256 | hmac-sha256 (with key = …)
    text = "{secrets.app_secret}{now_ms}"    # or sorted_params = "json" | "query" (+ suffix…)
    into = { query = "sign" }                # or { json = "Signature" }, { header = "X-Sign" }

    [providers.NAME.reply]
    tasks = "$"                              # where the task object(s) are; "d[*]" for a batch
    id = "taskId"                            # batch: the id inside each task object
    not_found = [404]                        # HTTP statuses meaning "no such task"

    [providers.NAME.map]                     # paths inside each task object
    state = { path = "status", values = { done = "succeeded", … } }
                                             # + rules = [{ when = "…", state = "…" }] tried first,
                                             #   messages / errors = { value = … } literals
    progress = "progress"                    # 0–100, clamped and rounded
    position = "queue.position"
    position_in = ["queued"]                 # optional: the states position is read in
    message = "message"
    upstream = { status = "status" }         # raw fields shown on events
    result = { urls = "result[*]", files = "files", base_url = "{base}", meta = { … } }
    error = { code = "error.code", message = ["error", "message"] }

    [providers.NAME.api_error]               # conditions on the whole reply
    when = "error_code != 0"
    code = "error_detail.code"
    message = ["error_detail.message", "error_msg"]
    auth = "error_code in [401, 403]"        # → non-retryable auth fault
    rate_limited = "error_code == 429"       # → rate_limited fault (honours Retry-After)
    not_found = "error_code == 404"          # → the task is unknown upstream
    task = "error_code < 500"                # → the task itself ends in task_state
    task_state = "failed"
    upstream = { error_code = "error_code" }

Placeholders: ``{base}`` (``base_url`` without its trailing slash),
``{task_id}``, ``{now_ms}``, ``{request_id}``, ``{secrets.NAME}``;
``{task_ids}`` only as a whole ``json`` leaf of a batch request and
``{task_id:int}`` only as a whole ``json`` leaf (the id as a JSON integer;
then only ids of 1–19 digits up to 2^63-1 are accepted); ``{{`` and ``}}``
are literal braces.
``${ENV}`` is the configuration loader's and is resolved first.

Wherever a path is expected, a list of paths may be given: the first one
that holds a value (not null, not an empty string) wins.

Every value of ``secrets``, every header, query and body value with literal
text (after removing placeholders), a literal ``sign.key`` and literal text of
8 characters or more in ``sign.text``/``prefix``/``suffix`` count as
credentials — they are scrubbed from messages and never printed — except the
values of ``Content-Type``, ``Accept``, ``Accept-Encoding``,
``Accept-Language``, ``Cache-Control`` and ``User-Agent``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.exceptions import ConfigError, InvalidTaskKey
from gateway.providers._reply import (
    NOT_FOUND,
    BaseUrl,
    MalformedReply,
    ReplyAdapter,
    api_error_fault,
    observe_listed,
    only_task_id,
    resolve_url,
    unrecognized_status,
)
from gateway.providers.base import (
    ProviderDefaults,
    UpstreamRequest,
    UpstreamResponse,
    fault_for_status,
)
from gateway.providers.conditions import Condition, ConditionSyntaxError, parse_condition
from gateway.providers.fieldpath import MISSING, FieldPath, PathSyntaxError, parse_path
from gateway.providers.signing import Algorithm, SignSettings, sign, sorted_pairs_text

__all__ = [
    "ApiErrorMapping",
    "BatchSettings",
    "FieldMapping",
    "HttpAdapter",
    "HttpSettings",
    "ReplySettings",
    "RequestSettings",
    "ResultMapping",
    "StateMapping",
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


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    request: RequestSettings
    map: FieldMapping
    reply: ReplySettings = ReplySettings()
    api_error: ApiErrorMapping | None = None
    cost_per_call: Annotated[float, msgspec.Meta(ge=0, le=1e9)] = 0.0
    secrets: dict[str, str] = msgspec.field(default_factory=dict)  # {secrets.NAME}


# --- templates ----------------------------------------------------------------

_PLACEHOLDERS: Final = ("base", "task_id", "task_ids", "now_ms", "request_id")
_SECRET: Final = "secrets."  # {secrets.NAME}: a value of the provider's secrets table
_INT_ID: Final = "task_id:int"  # a whole json leaf: the id as a JSON integer
_LONG_MAX: Final = 2**63 - 1
_INT_ID_RE: Final = re.compile(r"[0-9]{1,19}")
_MIN_SIGNED_LITERAL: Final = 8
_SECRET_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TOKEN_RE: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NOT_CREDENTIAL_HEADERS: Final = frozenset(
    {"content-type", "accept", "accept-encoding", "accept-language", "cache-control", "user-agent"}
)


@dataclass(frozen=True, slots=True)
class _Template:
    """Literal text and placeholder names, alternating as parsed."""

    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, text or name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(text for placeholder, text in self.parts if placeholder)

    @property
    def has_literal_text(self) -> bool:
        return any(text for placeholder, text in self.parts if not placeholder)

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(values[text] if placeholder else text for placeholder, text in self.parts)

    def literal(self) -> str:
        """The literal text alone, every placeholder left out."""
        return "".join(text for placeholder, text in self.parts if not placeholder)


def _template(text: str, key: str, allowed: Sequence[str]) -> _Template:
    """Parse a template.

    Raises:
        ConfigError: for an unknown or misplaced placeholder or a lone brace (at ``key``).
    """
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        name = match.group(1)
        if name is None:
            raise ConfigError(
                f"lone {token!r} at position {match.start()} (write {token * 2!r} for a literal)",
                path=key,
            )
        if name not in _PLACEHOLDERS and not name.startswith(_SECRET):
            if name == _INT_ID:
                raise ConfigError(
                    "{task_id:int} may only be a whole json value (the id as a JSON integer)",
                    path=key,
                )
            known = ", ".join("{" + p + "}" for p in allowed)
            raise ConfigError(f"unknown placeholder {{{name}}}; use {known}", path=key)
        if name not in allowed:
            raise ConfigError(_misplaced(name, allowed), path=key)
        parts.append((False, "".join(literal)))
        literal = []
        parts.append((True, name))
    literal.append(text[pos:])
    parts.append((False, "".join(literal)))
    return _Template(tuple((p, t) for p, t in parts if p or t))


def _misplaced(name: str, allowed: Sequence[str]) -> str:
    if name.startswith(_SECRET):
        declared = sorted(p for p in allowed if p.startswith(_SECRET))
        if not declared:
            return (
                f"{{{name}}}: secrets may go into headers, query parameters, the body and "
                "the signature, not here"
            )
        known = ", ".join("{" + p + "}" for p in declared)
        return f"{{{name}}} names no entry of the provider's secrets table; it has {known}"
    if name == "task_ids":
        return "{task_ids} may only be a whole json value of a batch request (request.batch)"
    if name == "task_id":
        return "{task_id} names one task; a batch request sends {task_ids} (request.json)"
    return f"{{{name}}} is not allowed here"


class _Ids:
    """The ``"{task_ids}"`` leaf of a JSON body template."""


_IDS: Final = _Ids()


def _render_json(template: Any, values: Mapping[str, str], task_ids: Sequence[str]) -> Any:
    if isinstance(template, _Template):
        return template.render(values)
    if template is _IDS:
        return list(task_ids)
    if template is _INT:
        return int(values["task_id"])
    if isinstance(template, dict):
        return {k: _render_json(v, values, task_ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_render_json(v, values, task_ids) for v in template]
    return template


# --- the compiled plan -----------------------------------------------------------

Paths = tuple[FieldPath, ...]


@dataclass(frozen=True, slots=True)
class _ApiErrorPlan:
    when: Condition
    code: Paths
    message: Paths
    auth: Condition | None
    rate_limited: Condition | None
    not_found: Condition | None
    task: Condition | None
    task_state: State
    upstream: tuple[tuple[str, Paths], ...]


@dataclass(frozen=True, slots=True)
class _SignPlan:
    algorithm: Algorithm
    encoding: Literal["hex", "base64"]
    text: _Template | None  # signed as written, or …
    sorted_params: Literal["json", "query"] | None  # … the request's sorted pairs
    prefix: _Template
    suffix: _Template
    key: _Template | None
    into: Literal["query", "json", "header"]
    name: str


@dataclass(frozen=True, slots=True)
class _Plan:
    """Settings parsed once: templates, paths and conditions ready to use."""

    method: str
    url: _Template
    headers: tuple[tuple[str, _Template], ...]
    query: tuple[tuple[str, _Template], ...]
    json: Any  # template tree, or None
    body: _Template | None
    batch: BatchSettings | None
    sign: _SignPlan | None
    int_id: bool  # the json body sends "{task_id:int}"
    secrets: tuple[tuple[str, str], ...]  # ("secrets.NAME", value)
    tasks: FieldPath
    id: FieldPath | None
    not_found: frozenset[int]
    state: Paths
    states: Mapping[str, State]
    rules: tuple[tuple[Condition, State], ...]
    state_messages: Mapping[str, str]
    state_errors: Mapping[str, ErrorInfo]
    progress: Paths
    position: Paths
    position_in: frozenset[State] | None
    message: Paths
    urls: Paths
    files: FieldPath | tuple[tuple[str, Paths], ...] | None
    meta: tuple[tuple[str, Paths], ...]
    result_base: _Template
    error_code: Paths
    error_message: Paths
    upstream: tuple[tuple[str, Paths], ...] | None
    api_error: _ApiErrorPlan | None
    credentials: tuple[str, ...]


def _path(text: str, key: str, *, single: bool = True) -> FieldPath:
    try:
        path = parse_path(text)
    except PathSyntaxError as exc:
        raise ConfigError(f"bad path {text!r}: {exc}", path=key) from None
    if single and path.fans_out:
        raise ConfigError(f"path {text!r} must name one value; [*] is not allowed here", path=key)
    return path


def _paths(spec: PathSpec | None, key: str, *, single: bool = True) -> Paths:
    if spec is None:
        return ()
    if isinstance(spec, str):
        return (_path(spec, key, single=single),)
    if not spec:
        raise ConfigError("needs at least one path", path=key)
    return tuple(_path(text, f"{key}[{i}]", single=single) for i, text in enumerate(spec))


def _named_paths(table: Mapping[str, PathSpec], key: str) -> tuple[tuple[str, Paths], ...]:
    return tuple((name, _paths(spec, f"{key}.{name}")) for name, spec in table.items())


def _condition(text: str | None, key: str) -> Condition | None:
    if text is None:
        return None
    try:
        return parse_condition(text)
    except ConditionSyntaxError as exc:
        raise ConfigError(f"bad condition {text!r}: {exc}", path=key) from None


def _state(name: str, key: str) -> State:
    try:
        return State(name)
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise ConfigError(f"{name!r} is not a state; use one of {known}", path=key) from None


class _IntId:
    """The ``"{task_id:int}"`` leaf of a JSON body template."""


_INT: Final = _IntId()


def _json_template(value: Any, key: str, allowed: Sequence[str], found: list[str]) -> Any:
    if isinstance(value, str):
        if value == "{task_ids}" and "task_ids" in allowed:
            found.append(key)
            return _IDS
        if value == "{" + _INT_ID + "}" and "task_id" in allowed:
            return _INT
        return _template(value, key, [p for p in allowed if p != "task_ids"])
    if isinstance(value, dict):
        return {k: _json_template(v, f"{key}.{k}", allowed, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_template(v, f"{key}[{i}]", allowed, found) for i, v in enumerate(value)]
    return value


def _json_credentials(template: Any) -> list[str]:
    if isinstance(template, _Template):
        return [template.literal()] if template.has_literal_text else []
    if isinstance(template, dict):
        return [c for v in template.values() for c in _json_credentials(v)]
    if isinstance(template, list):
        return [c for v in template for c in _json_credentials(v)]
    return []


def _credential_values(rendered: str) -> list[str]:
    """A credential value and its long words (``Bearer abc…`` also hides ``abc…``)."""
    words = [w for w in rendered.split() if len(w) >= 8 and w != rendered]
    return [rendered, *words] if rendered.strip() else []


def compile_settings(settings: HttpSettings) -> _Plan:
    """Check and parse everything the ``Struct`` types could not.

    Raises:
        ConfigError: ``path`` names the key relative to the provider table
            (``map.state.path``, ``request.headers.x-api-key``…).
    """
    request = settings.request
    batch = request.batch
    one = ["base", "task_id", "now_ms", "request_id"]
    many = ["base", "now_ms", "request_id"]
    # Secrets stay out of the URL path, which proxies and access logs record.
    url = _template(request.url, "request.url", many if batch is not None else one)
    for name, value in settings.secrets.items():
        if not _SECRET_NAME_RE.fullmatch(name):
            raise ConfigError(
                "a secret's name is a letter or _, then letters, digits, _ or -", path="secrets"
            )
        if not value:
            raise ConfigError(
                "is empty (an environment variable set to nothing?)", path=f"secrets.{name}"
            )
    secrets = [_SECRET + name for name in settings.secrets]
    allowed = [*(many if batch is not None else one), *secrets]
    if not request.url.startswith(("{base}", "http://", "https://")):
        raise ConfigError("must start with {base} or http(s)://", path="request.url")
    headers = tuple(
        (name, _template(v, f"request.headers.{name}", allowed))
        for name, v in request.headers.items()
    )
    query = tuple(
        (name, _template(v, f"request.query.{name}", allowed)) for name, v in request.query.items()
    )
    if request.json is not None and request.body is not None:
        raise ConfigError("give json or body, not both", path="request.body")
    ids_at: list[str] = []
    json_template = None
    if request.json is not None:
        json_allowed = [*allowed, "task_ids"] if batch is not None else allowed
        json_template = _json_template(request.json, "request.json", json_allowed, ids_at)
    body = None if request.body is None else _template(request.body, "request.body", allowed)
    has_body = request.json is not None or request.body is not None
    if batch is not None:
        _check_batch(batch, request, ids_at)
        has_body = has_body or batch.mode == "json"
    if has_body and request.method == "GET":
        raise ConfigError(
            "a GET request carries no body; use POST (or move the ids to query)",
            path="request.method",
        )
    sign_plan = None
    if request.sign is not None:
        sign_plan = _sign_plan(request.sign, request, allowed, json_template)

    reply = settings.reply
    tasks = _path(reply.tasks, "reply.tasks", single=False)
    id_path = None if reply.id is None else _path(reply.id, "reply.id")
    if batch is not None and id_path is None:
        raise ConfigError(
            "a batch reply lists many tasks: say which field holds each one's id", path="reply.id"
        )

    mapping = settings.map
    if not mapping.state.values:
        raise ConfigError("map at least one upstream value to a state", path="map.state.values")
    states = {
        raw: _state(name, f"map.state.values.{raw}") for raw, name in mapping.state.values.items()
    }
    rules = tuple(
        (
            _required_condition(rule.when, f"map.state.rules[{i}].when"),
            _state(rule.state, f"map.state.rules[{i}].state"),
        )
        for i, rule in enumerate(mapping.state.rules)
    )
    state_errors = {
        raw: _error_literal(error, f"map.state.errors.{raw}")
        for raw, error in mapping.state.errors.items()
    }
    result = mapping.result
    files: FieldPath | tuple[tuple[str, Paths], ...] | None
    if isinstance(result.files, str):
        files = _path(result.files, "map.result.files")
    elif result.files is not None:
        files = _named_paths(result.files, "map.result.files")
    else:
        files = None

    api_error = None
    if settings.api_error is not None:
        api_error = _api_error_plan(settings.api_error)

    credentials = [
        c
        for name, t in headers
        if name.lower() not in _NOT_CREDENTIAL_HEADERS and t.has_literal_text
        for c in _credential_values(t.literal())
    ]
    credentials += [
        c for _, t in query if t.has_literal_text for c in _credential_values(t.literal())
    ]
    credentials += [c for v in _json_credentials(json_template) for c in _credential_values(v)]
    if body is not None and body.has_literal_text:
        credentials += _credential_values(body.literal())
    if sign_plan is not None:
        # A literal HMAC key is a credential; in the signed text only literal runs
        # long enough to be one count (not separators like "&" or a "v1:" prefix).
        if sign_plan.key is not None and sign_plan.key.has_literal_text:
            credentials += _credential_values(sign_plan.key.literal())
        for part in (sign_plan.text, sign_plan.prefix, sign_plan.suffix):
            literal = "" if part is None else part.literal()
            if len(literal.strip()) >= _MIN_SIGNED_LITERAL:
                credentials += _credential_values(literal)
    credentials = [*settings.secrets.values(), *credentials]

    return _Plan(
        method=request.method,
        url=url,
        headers=headers,
        query=query,
        json=json_template,
        body=body,
        batch=batch,
        sign=sign_plan,
        int_id=_uses_int_id(json_template),
        secrets=tuple((_SECRET + name, value) for name, value in settings.secrets.items()),
        tasks=tasks,
        id=id_path,
        not_found=frozenset(reply.not_found),
        state=_paths(mapping.state.path, "map.state.path"),
        states=states,
        rules=rules,
        state_messages=dict(mapping.state.messages),
        state_errors=state_errors,
        progress=_paths(mapping.progress, "map.progress"),
        position=_paths(mapping.position, "map.position"),
        position_in=(
            None
            if mapping.position_in is None
            else frozenset(
                _state(name, f"map.position_in[{i}]") for i, name in enumerate(mapping.position_in)
            )
        ),
        message=_paths(mapping.message, "map.message"),
        urls=_paths(result.urls, "map.result.urls", single=False),
        files=files,
        meta=_named_paths(result.meta, "map.result.meta"),
        result_base=_template(result.base_url, "map.result.base_url", ["base"]),
        error_code=_paths(mapping.error.code, "map.error.code"),
        error_message=_paths(mapping.error.message, "map.error.message"),
        upstream=(
            None if mapping.upstream is None else _named_paths(mapping.upstream, "map.upstream")
        ),
        api_error=api_error,
        credentials=tuple(dict.fromkeys(credentials)),
    )


def _check_batch(batch: BatchSettings, request: RequestSettings, ids_at: list[str]) -> None:
    if batch.mode == "query":
        if not batch.param:
            raise ConfigError(
                'mode "query" repeats one query parameter per id: name it',
                path="request.batch.param",
            )
        if ids_at:
            raise ConfigError(
                'mode "query" sends the ids as query parameters, not in the body', path=ids_at[0]
            )
        return
    if batch.param is not None:
        raise ConfigError('param is for mode "query"', path="request.batch.param")
    if request.body is not None:
        raise ConfigError(
            'mode "json" builds a JSON body; use json (with a "{task_ids}" value)',
            path="request.body",
        )
    if request.json is not None and not ids_at:
        raise ConfigError(
            'mode "json" needs "{task_ids}" as one value of the json template',
            path="request.json",
        )
    if len(ids_at) > 1:
        raise ConfigError('"{task_ids}" may appear only once', path=ids_at[1])


def _error_literal(error: ErrorLiteral, key: str) -> ErrorInfo:
    for field in ("code", "message"):
        if not getattr(error, field).strip():
            raise ConfigError("must not be empty", path=f"{key}.{field}")
    return ErrorInfo(error.code, error.message)


def _required_condition(text: str, key: str) -> Condition:
    condition = _condition(text, key)
    assert condition is not None
    return condition


def _uses_int_id(template: Any) -> bool:
    if template is _INT:
        return True
    if isinstance(template, dict):
        return any(_uses_int_id(v) for v in template.values())
    if isinstance(template, list):
        return any(_uses_int_id(v) for v in template)
    return False


def _sign_plan(
    sign: SignSettings, request: RequestSettings, allowed: Sequence[str], json_template: Any
) -> _SignPlan:
    """Check ``request.sign`` against the rest of the request.

    Raises:
        ConfigError: at the ``request.sign…`` (or ``request.json…``) key that is wrong.
    """
    choices: list[tuple[Literal["query", "json", "header"], str | None]] = [
        ("query", sign.into.query),
        ("json", sign.into.json),
        ("header", sign.into.header),
    ]
    targets = [(into, name) for into, name in choices if name is not None]
    if len(targets) != 1:
        raise ConfigError(
            'say where the signature goes, once: { query = "sign" }, { json = "Signature" } '
            'or { header = "X-Signature" }',
            path="request.sign.into",
        )
    [(into, name)] = targets
    if not name:
        raise ConfigError("name the parameter, field or header", path=f"request.sign.into.{into}")
    if (sign.text is None) == (sign.sorted_params is None):
        raise ConfigError(
            'give text (a template, signed as written) or sorted_params = "json" | "query"',
            path="request.sign.text" if sign.text is not None else "request.sign",
        )
    if sign.text is not None and (sign.prefix or sign.suffix):
        which = "prefix" if sign.prefix else "suffix"
        raise ConfigError(
            "prefix and suffix frame sorted_params; put the text in text",
            path=f"request.sign.{which}",
        )
    if sign.algorithm == "hmac-sha256" and sign.key is None:
        raise ConfigError(
            'hmac-sha256 needs a key (e.g. key = "{secrets.NAME}")', path="request.sign.key"
        )
    if sign.algorithm != "hmac-sha256" and sign.key is not None:
        raise ConfigError(
            f"{sign.algorithm} is a plain digest and takes no key: use hmac-sha256, "
            "or put the secret in text or suffix",
            path="request.sign.key",
        )
    if (into == "json" or sign.sorted_params == "json") and not isinstance(json_template, dict):
        raise ConfigError(
            "signing into or over the JSON body needs request.json to be a table",
            path="request.json" if request.json is not None else "request.sign",
        )
    if into == "json" and name in json_template:
        raise ConfigError(
            "this field receives the signature (request.sign.into.json): leave it out",
            path=f"request.json.{name}",
        )
    if into == "query" and request.batch is not None and name == request.batch.param:
        raise ConfigError(
            "this parameter carries the batch's ids (request.batch.param): name the "
            "signature's parameter differently",
            path="request.sign.into.query",
        )
    if into == "query" and name in request.query:
        raise ConfigError(
            "this parameter receives the signature (request.sign.into.query): leave it out",
            path=f"request.query.{name}",
        )
    if into == "header" and name.lower() in {h.lower() for h in request.headers}:
        raise ConfigError(
            "this header receives the signature (request.sign.into.header): leave it out",
            path=f"request.headers.{name}",
        )
    if sign.sorted_params == "json":
        for field, value in json_template.items():
            _check_flat(value, f"request.json.{field}")
    signed = [p for p in allowed if p != "task_ids"]
    return _SignPlan(
        algorithm=sign.algorithm,
        encoding=sign.encoding,
        text=None if sign.text is None else _template(sign.text, "request.sign.text", signed),
        sorted_params=sign.sorted_params,
        prefix=_template(sign.prefix, "request.sign.prefix", signed),
        suffix=_template(sign.suffix, "request.sign.suffix", signed),
        key=None if sign.key is None else _template(sign.key, "request.sign.key", signed),
        into=into,
        name=name,
    )


def _check_flat(value: Any, key: str) -> None:
    """Sorted pairs flatten scalars and lists of scalars; anything deeper has no agreed form."""
    if value is _IDS:
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        scalar = item is None or isinstance(item, _Template | _IntId | str | int | float | bool)
        if not scalar:
            raise ConfigError(
                "sorted_params signs scalars and lists of scalars (as Key.0, Key.1…); "
                f"this holds {_type_name(item)}",
                path=key,
            )


def _api_error_plan(mapping: ApiErrorMapping) -> _ApiErrorPlan:
    when = _condition(mapping.when, "api_error.when")
    assert when is not None
    return _ApiErrorPlan(
        when=when,
        code=_paths(mapping.code, "api_error.code"),
        message=_paths(mapping.message, "api_error.message"),
        auth=_condition(mapping.auth, "api_error.auth"),
        rate_limited=_condition(mapping.rate_limited, "api_error.rate_limited"),
        not_found=_condition(mapping.not_found, "api_error.not_found"),
        task=_condition(mapping.task, "api_error.task"),
        task_state=_state(mapping.task_state, "api_error.task_state"),
        upstream=_named_paths(mapping.upstream, "api_error.upstream"),
    )


# --- reading values out of a reply -------------------------------------------------


def _type_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a bool"
    return f"a {type(value).__name__}"


def _first(paths: Paths, document: Any, *, skip_empty: bool = True) -> tuple[Any, str]:
    """The first present value among ``paths`` and the path that held it.

    Present means matched, not ``null`` and (with ``skip_empty``) not ``""``.
    """
    for path in paths:
        value = path.first(document)
        if value is MISSING or value is None or (skip_empty and value == ""):
            continue
        return value, path.text
    return None, paths[0].text if paths else ""


def _number(paths: Paths, document: Any) -> float | None:
    value, at = _first(paths, document)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReply(f"field {at!r} is {_type_name(value)}, expected a number")
    return float(value)


def _text(paths: Paths, document: Any) -> str | None:
    value, at = _first(paths, document)
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise MalformedReply(f"field {at!r} is {_type_name(value)}, expected text")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_key(value: object, at: str) -> str:
    """How an upstream scalar is looked up in a ``values`` table (whose keys are text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedReply(f"field {at!r} is {_type_name(value)}, expected a status value")


def _raw_fields(named: tuple[tuple[str, Paths], ...], document: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, paths in named:
        value, _ = _first(paths, document, skip_empty=False)
        if value is not None:
            found[name] = value
    return found


# --- signing ---------------------------------------------------------------------------


def _signature(
    plan: _SignPlan,
    values: Mapping[str, str],
    params: Sequence[tuple[str, str]],
    document: Any,
) -> str:
    """The signature of one request (gateway/providers/signing.py), before it is placed."""
    if plan.text is not None:
        text = plan.text.render(values)
    else:
        signed: Sequence[tuple[str, Any]] = params
        if plan.sorted_params == "json":
            assert isinstance(document, dict)
            signed = list(document.items())
        prefix, suffix = plan.prefix.render(values), plan.suffix.render(values)
        text = sorted_pairs_text(signed, prefix=prefix, suffix=suffix)
    key = None if plan.key is None else plan.key.render(values)
    return sign(plan.algorithm, text, key=key, encoding=plan.encoding)


# --- the adapter ----------------------------------------------------------------------


class HttpAdapter(ReplyAdapter):
    """An upstream described by :class:`HttpSettings` (see the module docstring)."""

    kind = "http"
    Settings = HttpSettings
    # Without an upstream doc to go by: a moderate pace; every key is overridable.
    defaults = ProviderDefaults(interval_s=5.0, max_interval_s=30.0)
    settings: HttpSettings

    def __init__(
        self, settings: HttpSettings, *, batch_size: int | None = None, name: str | None = None
    ) -> None:
        self._plan = compile_settings(settings)
        super().__init__(settings, batch_size=batch_size, name=name)

    @classmethod
    def defaults_for(cls, settings: Any) -> ProviderDefaults:
        assert isinstance(settings, HttpSettings)
        batch = settings.request.batch
        return msgspec.structs.replace(
            cls.defaults,
            batch_size=batch.size if batch is not None else 1,
            cost_per_call=settings.cost_per_call,
        )

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        assert isinstance(settings, HttpSettings)
        compile_settings(settings)

    def check_task_id(self, task_id: str) -> None:
        if self._plan.int_id and not (_INT_ID_RE.fullmatch(task_id) and int(task_id) <= _LONG_MAX):
            raise InvalidTaskKey(
                f"{self.name} task ids are integers (sent as a JSON number, at most 2^63-1)",
                field="task_id",
            )
        # In a URL path, "." and ".." are dot-segments (RFC 3986 §5.2.4) that
        # would be resolved away before reaching the status route.
        if "task_id" in self._plan.url.names and task_id in (".", ".."):
            raise InvalidTaskKey(
                f"{self.name} task ids cannot be '.' or '..' (they are URL path segments)",
                field="task_id",
            )

    def secret_values(self) -> tuple[str, ...]:
        return self._plan.credentials  # the secrets table's values first

    # -- requests --------------------------------------------------------------

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        """Raises :class:`InvalidTaskKey` for an id :meth:`check_task_id` refuses."""
        plan = self._plan
        values = {"base": self.root, "now_ms": str(now_ms), "request_id": request_id}
        values.update(plan.secrets)
        if plan.batch is None:
            values["task_id"] = only_task_id(task_ids, self.name)
            if plan.int_id:
                self.check_task_id(values["task_id"])
        # In the URL the id is one path segment or query value: encode all of it.
        url = plan.url.render({**values, "task_id": quote(values.get("task_id", ""), safe="")})
        params = [(name, t.render(values)) for name, t in plan.query]
        headers = [(name, t.render(values)) for name, t in plan.headers]
        if plan.batch is not None and plan.batch.mode == "query":
            assert plan.batch.param is not None
            params.extend((plan.batch.param, task_id) for task_id in task_ids)
        document: Any = None
        if plan.json is not None:
            document = _render_json(plan.json, values, task_ids)
        elif plan.batch is not None and plan.batch.mode == "json":
            document = list(task_ids)
        if plan.sign is not None:
            signature = _signature(plan.sign, values, params, document)
            if plan.sign.into == "query":
                params.append((plan.sign.name, signature))
            elif plan.sign.into == "header":
                headers.append((plan.sign.name, signature))
            else:
                document = {**document, plan.sign.name: signature}
        body: bytes | None = None
        if document is not None:
            body = msgspec.json.encode(document)
        elif plan.body is not None:
            body = plan.body.render(values).encode()
        json_body = body is not None and plan.body is None
        if json_body and not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json"))
        return UpstreamRequest(
            method=plan.method,
            url=url,
            task_ids=tuple(task_ids),
            params=tuple(params),
            headers=tuple(headers),
            body=body,
        )

    # -- replies ---------------------------------------------------------------

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        plan = self._plan
        if response.status_code in plan.not_found:
            return {
                task_id: Observation(task_id, State.UNKNOWN, error=NOT_FOUND)
                for task_id in request.task_ids
            }
        document = self.decode_or_fault(response, object)
        if isinstance(document, Fault):
            return document
        if plan.api_error is not None and plan.api_error.when.holds(document):
            return self._api_error(plan.api_error, request, response, document)
        if (status_fault := fault_for_status(response, self.name)) is not None:
            return status_fault
        items = self._items(document)
        if plan.batch is None:
            task_id = request.task_ids[0]
            if not items:
                raise MalformedReply(f"nothing at {plan.tasks.text!r}")
            return {task_id: self._observe(task_id, items[0])}
        return observe_listed(request.task_ids, items, self._id_of, self._observe_item)

    def _items(self, document: Any) -> list[Any]:
        """The task objects of a reply, in order."""
        path = self._plan.tasks
        found = path.find(document)
        if path.fans_out or self._plan.batch is None:
            return [item for item in found if item is not None]
        if not found or found[0] is None:
            return []  # the doc's "not found yet": every id reads as not visible
        if not isinstance(found[0], list):
            raise MalformedReply(f"field {path.text!r} is {_type_name(found[0])}, expected a list")
        return list(found[0])

    def _id_of(self, item: Any) -> str:
        assert self._plan.id is not None
        value = self._plan.id.first(item)
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return ""  # matches no requested id

    def _observe_item(self, item: Any) -> Observation:
        return self._observe(self._id_of(item), item)

    def _observe(self, task_id: str, item: Any) -> Observation:
        plan = self._plan
        raw, at = _first(plan.state, item, skip_empty=False)
        if raw is None:
            raise MalformedReply(f"field {at!r} is missing")
        key = _value_key(raw, at)
        upstream = _raw_fields(plan.upstream, item) if plan.upstream is not None else {at: raw}
        ruled = next((state for when, state in plan.rules if when.holds(item)), None)
        state = ruled or plan.states.get(key)
        if state is None:
            return unrecognized_status(task_id, raw, upstream)
        progress = _number(plan.progress, item)
        read_position = plan.position_in is None or state in plan.position_in
        position = _number(plan.position, item) if read_position else None
        result = self._result(item) if state is State.SUCCEEDED else None
        return Observation(
            task_id,
            state,
            progress=None if progress is None else round(min(max(progress, 0.0), 100.0)),
            position=None if position is None else max(0, round(position)),
            message=_text(plan.message, item) or plan.state_messages.get(key),
            result=result,
            error=self._error(state, item, key),
            upstream=upstream,
        )

    def _result(self, item: Any) -> Result:
        plan = self._plan
        root = plan.result_base.render({"base": self.root}).rstrip("/")
        files: dict[str, str] = {}
        if isinstance(plan.files, FieldPath):
            found = plan.files.first(item)
            if isinstance(found, dict):
                for name, value in found.items():
                    if isinstance(value, str) and value:
                        files[str(name)] = resolve_url(root, value)
                    elif value is not None:
                        raise MalformedReply(
                            f"field {plan.files.text!r}.{name} is {_type_name(value)}, "
                            "expected a URL"
                        )
            elif found is not MISSING and found is not None:
                raise MalformedReply(
                    f"field {plan.files.text!r} is {_type_name(found)}, expected an object"
                )
        elif plan.files is not None:
            for name, paths in plan.files:
                value = _text(paths, item)
                if value:
                    files[name] = resolve_url(root, value)
        if plan.urls:
            urls = [resolve_url(root, url) for url in self._urls(item)]
        else:
            urls = list(files.values())
        return Result(urls=tuple(urls), files=files, meta=_raw_fields(plan.meta, item))

    def _urls(self, item: Any) -> list[str]:
        urls: list[str] = []
        for path in self._plan.urls:
            for value in path.find(item):
                values = value if isinstance(value, list) else [value]
                for url in values:
                    if isinstance(url, str) and url:
                        urls.append(url)
                    elif url is not None:
                        raise MalformedReply(
                            f"field {path.text!r} holds {_type_name(url)}, expected URLs"
                        )
        return urls

    def _error(self, state: State, item: Any, key: str) -> ErrorInfo | None:
        if not state.terminal or state is State.SUCCEEDED:
            return None
        plan = self._plan
        if key in plan.state_errors:
            return plan.state_errors[key]
        message = _text(plan.error_message, item)
        if state is not State.FAILED and message is None:
            return None
        code = _text(plan.error_code, item) or "upstream_failed"
        return ErrorInfo(code, message or "task failed")

    def _api_error(
        self,
        api_error: _ApiErrorPlan,
        request: UpstreamRequest,
        response: UpstreamResponse,
        document: Any,
    ) -> Fault | Mapping[str, Observation]:
        code = _text(api_error.code, document)
        text = _text(api_error.message, document)
        detail = ": ".join(part for part in (code, text) if part)
        label = f"{self.name} API error" + (f" ({detail})" if detail else "")
        if api_error.not_found is not None and api_error.not_found.holds(document):
            return {
                task_id: Observation(task_id, State.UNKNOWN, error=NOT_FOUND)
                for task_id in request.task_ids
            }
        if api_error.auth is not None and api_error.auth.holds(document):
            return api_error_fault(response, label, auth=True)
        if api_error.rate_limited is not None and api_error.rate_limited.holds(document):
            return api_error_fault(response, label, auth=False, rate_limited=True)
        status = response.status_code
        if status in (401, 403, 429) or status >= 500:
            return api_error_fault(response, label, auth=False)
        if api_error.task is not None and api_error.task.holds(document):
            error = ErrorInfo(code or "upstream_error", text or label)
            upstream = _raw_fields(api_error.upstream, document) or None
            return {
                task_id: Observation(task_id, api_error.task_state, error=error, upstream=upstream)
                for task_id in request.task_ids
            }
        return api_error_fault(response, label, auth=False)
