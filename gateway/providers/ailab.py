"""ailab — "异步任务查询 API" (docs/providers/ailab.md).

One task per request: ``GET {base}/common/query-async-task-result?task_id=…``
(the doc's OpenAPI section) with the ``ailabapi-api-key`` header. Every reply
is the doc's envelope (``error_code``, ``error_msg``, ``error_detail``) plus
``task_status`` and, once done, ``result`` (a list of URLs valid for 24 h).
The doc's OpenAPI section answers HTTP 400/401 with the same envelope, so the
envelope is read first and the bare HTTP status only decides when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.providers._reply import (
    BaseUrl,
    Credential,
    MalformedReply,
    ReplyAdapter,
    api_error_fault,
    only_task_id,
    unrecognized_status,
)
from gateway.providers.base import (
    ProviderDefaults,
    UpstreamRequest,
    UpstreamResponse,
    fault_for_status,
)

__all__ = ["AilabAdapter", "AilabSettings"]


class AilabSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    api_key: Credential


class _ErrorDetail(msgspec.Struct, frozen=True):
    code: str | None = None
    message: str | None = None


class _Reply(msgspec.Struct, frozen=True):
    error_code: int
    error_msg: str | None = None
    error_detail: _ErrorDetail | None = None
    task_status: int | None = None
    result: list[str] | None = None


# "任务状态说明": 0 排队中, 1 处理中, 2 已完成, -1 失败.
_STATES = {0: State.QUEUED, 1: State.RUNNING, 2: State.SUCCEEDED, -1: State.FAILED}


class AilabAdapter(ReplyAdapter):
    """Adapter for ailab's async task query (one task id per request)."""

    kind = "ailab"
    Settings = AilabSettings
    # "建议每 5 秒查询一次结果"; "异步任务结果有效期为 24 小时".
    defaults = ProviderDefaults(interval_s=5.0, max_interval_s=30.0, result_ttl_s=24 * 3600.0)
    settings: AilabSettings

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        task_id = only_task_id(task_ids, self.kind)
        return UpstreamRequest(
            method="GET",
            url=f"{self.root}/common/query-async-task-result",
            task_ids=(task_id,),
            params=(("task_id", task_id),),
            headers=(("ailabapi-api-key", self.settings.api_key),),
        )

    def secret_values(self) -> tuple[str, ...]:
        return (self.settings.api_key,)

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        task_id = request.task_ids[0]
        reply = self.decode_or_fault(response, _Reply)
        if isinstance(reply, Fault):
            return reply
        if reply.error_code != 0:
            return self._api_error(task_id, reply, response)
        # A non-2xx status around an envelope claiming success says nothing reliable.
        if (status_fault := fault_for_status(response, self.kind)) is not None:
            return status_fault
        return {task_id: self._observe(task_id, reply)}

    def _observe(self, task_id: str, reply: _Reply) -> Observation:
        if reply.task_status is None:
            # Absent only on error replies ("响应示例 / 错误响应"), and this one is not.
            raise MalformedReply("field 'task_status' is missing although error_code is 0")
        upstream = {"task_status": reply.task_status}
        state = _STATES.get(reply.task_status)
        if state is None:
            return unrecognized_status(task_id, reply.task_status, upstream)
        result = Result(urls=tuple(reply.result or ())) if state is State.SUCCEEDED else None
        error = (
            ErrorInfo("upstream_failed", reply.error_msg or "task failed")
            if state is State.FAILED
            else None
        )
        return Observation(task_id, state, result=result, error=error, upstream=upstream)

    def _api_error(
        self, task_id: str, reply: _Reply, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        code = reply.error_code
        detail = reply.error_detail or _ErrorDetail()
        text = detail.message or reply.error_msg or ""
        label = f"error_code {code}" + (f" {detail.code}" if detail.code else "")
        status = response.status_code
        if code in (401, 403, 429) or code >= 500 or status in (401, 403, 429) or status >= 500:
            return api_error_fault(
                response,
                f"ailab API error ({label}{': ' + text if text else ''})",
                auth=code in (401, 403),
                rate_limited=code == 429,
            )
        # Any other API error is about this task id, e.g. the doc's
        # ERROR_INVALID_TASK_ID "invalid or expired": the task is over for us.
        error = ErrorInfo(detail.code or str(code), text or label)
        return {
            task_id: Observation(task_id, State.FAILED, error=error, upstream={"error_code": code})
        }
