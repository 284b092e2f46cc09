"""The declarative adapter: requests built and replies read by a compiled plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.exceptions import InvalidTaskKey
from gateway.providers._reply import (
    NOT_FOUND,
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
from gateway.providers.declarative.compiler import ApiErrorPlan, SignPlan, compile_settings
from gateway.providers.declarative.reading import (
    first_of,
    number_of,
    raw_fields,
    text_of,
    type_name,
    value_key,
)
from gateway.providers.declarative.settings import DeclarativeSettings
from gateway.providers.declarative.templates import INT_ID_RE, LONG_MAX, render_json
from gateway.providers.fieldpath import MISSING, FieldPath
from gateway.providers.signing import sign, sorted_pairs_text

__all__ = ["DeclarativeAdapter"]


def _signature(
    plan: SignPlan,
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


class DeclarativeAdapter(ReplyAdapter):
    """An upstream described by :class:`DeclarativeSettings` (see the module docstring)."""

    kind = "http"
    Settings = DeclarativeSettings
    # Without an upstream doc to go by: a moderate pace; every key is overridable.
    defaults = ProviderDefaults(interval_s=5.0, max_interval_s=30.0)
    settings: DeclarativeSettings

    def __init__(
        self,
        settings: DeclarativeSettings,
        *,
        batch_size: int | None = None,
        name: str | None = None,
    ) -> None:
        self._plan = compile_settings(settings)
        super().__init__(settings, batch_size=batch_size, name=name)

    @classmethod
    def defaults_for(cls, settings: Any) -> ProviderDefaults:
        assert isinstance(settings, DeclarativeSettings)
        batch = settings.request.batch
        return msgspec.structs.replace(
            cls.defaults,
            batch_size=batch.size if batch is not None else 1,
            cost_per_call=settings.cost_per_call,
        )

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        assert isinstance(settings, DeclarativeSettings)
        compile_settings(settings)

    def check_task_id(self, task_id: str) -> None:
        if self._plan.int_id and not (INT_ID_RE.fullmatch(task_id) and int(task_id) <= LONG_MAX):
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
            document = render_json(plan.json, values, task_ids)
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
            raise MalformedReply(f"field {path.text!r} is {type_name(found[0])}, expected a list")
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
        raw, at = first_of(plan.state, item, skip_empty=False)
        if raw is None:
            raise MalformedReply(f"field {at!r} is missing")
        key = value_key(raw, at)
        upstream = raw_fields(plan.upstream, item) if plan.upstream is not None else {at: raw}
        ruled = next((state for when, state in plan.rules if when.holds(item)), None)
        state = ruled or plan.states.get(key)
        if state is None:
            return unrecognized_status(task_id, raw, upstream)
        progress = number_of(plan.progress, item)
        read_position = plan.position_in is None or state in plan.position_in
        position = number_of(plan.position, item) if read_position else None
        result = self._result(item) if state is State.SUCCEEDED else None
        return Observation(
            task_id,
            state,
            progress=None if progress is None else round(min(max(progress, 0.0), 100.0)),
            position=None if position is None else max(0, round(position)),
            message=text_of(plan.message, item) or plan.state_messages.get(key),
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
                            f"field {plan.files.text!r}.{name} is {type_name(value)}, "
                            "expected a URL"
                        )
            elif found is not MISSING and found is not None:
                raise MalformedReply(
                    f"field {plan.files.text!r} is {type_name(found)}, expected an object"
                )
        elif plan.files is not None:
            for name, paths in plan.files:
                value = text_of(paths, item)
                if value:
                    files[name] = resolve_url(root, value)
        if plan.urls:
            urls = [resolve_url(root, url) for url in self._urls(item)]
        else:
            urls = list(files.values())
        return Result(urls=tuple(urls), files=files, meta=raw_fields(plan.meta, item))

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
                            f"field {path.text!r} holds {type_name(url)}, expected URLs"
                        )
        return urls

    def _error(self, state: State, item: Any, key: str) -> ErrorInfo | None:
        if not state.terminal or state is State.SUCCEEDED:
            return None
        plan = self._plan
        if key in plan.state_errors:
            return plan.state_errors[key]
        message = text_of(plan.error_message, item)
        if state is not State.FAILED and message is None:
            return None
        code = text_of(plan.error_code, item) or "upstream_failed"
        return ErrorInfo(code, message or "task failed")

    def _api_error(
        self,
        api_error: ApiErrorPlan,
        request: UpstreamRequest,
        response: UpstreamResponse,
        document: Any,
    ) -> Fault | Mapping[str, Observation]:
        code = text_of(api_error.code, document)
        text = text_of(api_error.message, document)
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
            upstream = raw_fields(api_error.upstream, document) or None
            return {
                task_id: Observation(task_id, api_error.task_state, error=error, upstream=upstream)
                for task_id in request.task_ids
            }
        return api_error_fault(response, label, auth=False)
