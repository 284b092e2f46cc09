"""Compiling a declarative provider's settings into a plan: every check the schema cannot make.

:func:`compile_settings` parses the templates, paths and conditions once,
checks them against each other (batch, body, signature, placeholders) and
collects the credentials to scrub.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.core.model import ErrorInfo, State
from gateway.exceptions import ConfigError
from gateway.providers.conditions import Condition, ConditionSyntaxError, parse_condition
from gateway.providers.declarative.reading import Paths, type_name
from gateway.providers.declarative.settings import (
    ApiErrorMapping,
    BatchSettings,
    DeclarativeSettings,
    ErrorLiteral,
    PathSpec,
    RequestSettings,
)
from gateway.providers.declarative.templates import (
    IDS,
    MIN_SIGNED_LITERAL,
    NOT_CREDENTIAL_HEADERS,
    SECRET,
    SECRET_NAME_RE,
    IntId,
    Template,
    parse_json_template,
    parse_template,
    uses_int_id,
)
from gateway.providers.fieldpath import FieldPath, PathSyntaxError, parse_path
from gateway.providers.signing import Algorithm, SignSettings

__all__ = ["ApiErrorPlan", "Plan", "SignPlan", "compile_settings"]


@dataclass(frozen=True, slots=True)
class ApiErrorPlan:
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
class SignPlan:
    algorithm: Algorithm
    encoding: Literal["hex", "base64"]
    text: Template | None  # signed as written, or …
    sorted_params: Literal["json", "query"] | None  # … the request's sorted pairs
    prefix: Template
    suffix: Template
    key: Template | None
    into: Literal["query", "json", "header"]
    name: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Settings parsed once: templates, paths and conditions ready to use."""

    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...]
    query: tuple[tuple[str, Template], ...]
    json: Any  # template tree, or None
    body: Template | None
    batch: BatchSettings | None
    sign: SignPlan | None
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
    result_base: Template
    error_code: Paths
    error_message: Paths
    upstream: tuple[tuple[str, Paths], ...] | None
    api_error: ApiErrorPlan | None
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


def _json_credentials(template: Any) -> list[str]:
    if isinstance(template, Template):
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


def compile_settings(settings: DeclarativeSettings) -> Plan:
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
    url = parse_template(request.url, "request.url", many if batch is not None else one)
    for name, value in settings.secrets.items():
        if not SECRET_NAME_RE.fullmatch(name):
            raise ConfigError(
                "a secret's name is a letter or _, then letters, digits, _ or -", path="secrets"
            )
        if not value:
            raise ConfigError(
                "is empty (an environment variable set to nothing?)", path=f"secrets.{name}"
            )
    secrets = [SECRET + name for name in settings.secrets]
    allowed = [*(many if batch is not None else one), *secrets]
    if not request.url.startswith(("{base}", "http://", "https://")):
        raise ConfigError("must start with {base} or http(s)://", path="request.url")
    headers = tuple(
        (name, parse_template(v, f"request.headers.{name}", allowed))
        for name, v in request.headers.items()
    )
    query = tuple(
        (name, parse_template(v, f"request.query.{name}", allowed))
        for name, v in request.query.items()
    )
    if request.json is not None and request.body is not None:
        raise ConfigError("give json or body, not both", path="request.body")
    ids_at: list[str] = []
    json_template = None
    if request.json is not None:
        json_allowed = [*allowed, "task_ids"] if batch is not None else allowed
        json_template = parse_json_template(request.json, "request.json", json_allowed, ids_at)
    body = None if request.body is None else parse_template(request.body, "request.body", allowed)
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
        if name.lower() not in NOT_CREDENTIAL_HEADERS and t.has_literal_text
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
            if len(literal.strip()) >= MIN_SIGNED_LITERAL:
                credentials += _credential_values(literal)
    credentials = [*settings.secrets.values(), *credentials]

    return Plan(
        method=request.method,
        url=url,
        headers=headers,
        query=query,
        json=json_template,
        body=body,
        batch=batch,
        sign=sign_plan,
        int_id=uses_int_id(json_template),
        secrets=tuple((SECRET + name, value) for name, value in settings.secrets.items()),
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
        result_base=parse_template(result.base_url, "map.result.base_url", ["base"]),
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


def _sign_plan(
    sign: SignSettings, request: RequestSettings, allowed: Sequence[str], json_template: Any
) -> SignPlan:
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
    return SignPlan(
        algorithm=sign.algorithm,
        encoding=sign.encoding,
        text=None if sign.text is None else parse_template(sign.text, "request.sign.text", signed),
        sorted_params=sign.sorted_params,
        prefix=parse_template(sign.prefix, "request.sign.prefix", signed),
        suffix=parse_template(sign.suffix, "request.sign.suffix", signed),
        key=None if sign.key is None else parse_template(sign.key, "request.sign.key", signed),
        into=into,
        name=name,
    )


def _check_flat(value: Any, key: str) -> None:
    """Sorted pairs flatten scalars and lists of scalars; anything deeper has no agreed form."""
    if value is IDS:
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        scalar = item is None or isinstance(item, Template | IntId | str | int | float | bool)
        if not scalar:
            raise ConfigError(
                "sorted_params signs scalars and lists of scalars (as Key.0, Key.1…); "
                f"this holds {type_name(item)}",
                path=key,
            )


def _api_error_plan(mapping: ApiErrorMapping) -> ApiErrorPlan:
    when = _condition(mapping.when, "api_error.when")
    assert when is not None
    return ApiErrorPlan(
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
