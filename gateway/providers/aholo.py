"""aholo — "Query Task Status" by ids (docs/providers/aholo.md).

A batch upstream: ``POST {base}/v2/aholo/project/task/list/by-ids`` with the
query parameters ``appuid``, ``appkey``, ``timestamp`` (ms) and ``sign``, and a
JSON array of task ids as the body. The reply envelope is
``{"c": "0", "d": [task…], "m": …, "f": …}``; ``c != "0"`` is an API error.
The doc's own loop treats an empty ``d`` as "任务未找到,继续等待" (not found
yet, keep waiting), so an id missing from ``d`` is not a failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.providers._reply import (
    BaseUrl,
    Credential,
    ReplyAdapter,
    api_error_fault,
    observe_listed,
    unrecognized_status,
)
from gateway.providers.base import (
    ProviderDefaults,
    UpstreamRequest,
    UpstreamResponse,
    fault_for_status,
)

__all__ = ["AholoAdapter", "AholoSettings", "aholo_sign"]


class AholoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    app_key: Credential
    app_secret: Credential
    appuid: Credential


class _TaskResult(msgspec.Struct, frozen=True):
    plyPath: str | None = None
    spzPath: str | None = None
    sogPath: str | None = None


class _Task(msgspec.Struct, frozen=True):
    taskId: str
    status: int
    result: _TaskResult | None = None


class _Reply(msgspec.Struct, frozen=True):
    c: str | int
    d: list[_Task] | None = None  # absent or null on error replies
    m: str | None = None


# "Task Status Enum": status → (state, message). 0 排队中, 1 等待执行,
# 8 预处理中 and 2 执行中 keep polling; 3–7 are final.
_STATES: dict[int, tuple[State, str | None]] = {
    0: (State.QUEUED, "queued"),
    1: (State.QUEUED, "waiting"),
    8: (State.RUNNING, "preprocessing"),
    2: (State.RUNNING, None),
    3: (State.SUCCEEDED, None),
    4: (State.FAILED, None),
    5: (State.CANCELLED, None),
    6: (State.EXPIRED, None),  # 超时: the upstream timed the task out
    7: (State.REJECTED, None),
}

# "Result Object", in the doc's order: result file name → field.
_RESULT_FILES = (("ply", "plyPath"), ("spz", "spzPath"), ("sog", "sogPath"))


def aholo_sign(app_secret: str, app_key: str, appuid: str, timestamp_ms: int) -> str:
    """``sign = md5(appSecret + appKey + appuid + timestamp)``, lowercase hex."""
    text = f"{app_secret}{app_key}{appuid}{timestamp_ms}"
    return hashlib.md5(text.encode()).hexdigest()


class AholoAdapter(ReplyAdapter):
    """Adapter for aholo's batch task query (up to 100 ids per request)."""

    kind = "aholo"
    Settings = AholoSettings
    # "推荐轮询间隔 5 秒以上"; reconstructions take "约 2-5 分钟" to "约 5-10 分钟".
    defaults = ProviderDefaults(
        interval_s=5.0, max_interval_s=30.0, batch_size=100, typical_duration_s=(120.0, 600.0)
    )
    settings: AholoSettings

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        s = self.settings
        return UpstreamRequest(
            method="POST",
            url=f"{self.root}/v2/aholo/project/task/list/by-ids",
            task_ids=tuple(task_ids),
            params=(
                ("appuid", s.appuid),
                ("appkey", s.app_key),
                ("timestamp", str(now_ms)),
                ("sign", aholo_sign(s.app_secret, s.app_key, s.appuid, now_ms)),
            ),
            headers=(("Content-Type", "application/json"),),
            body=msgspec.json.encode(list(task_ids)),
        )

    def secret_values(self) -> tuple[str, ...]:
        s = self.settings
        return (s.app_key, s.app_secret, s.appuid)

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        reply = self.decode_or_fault(response, _Reply)
        if isinstance(reply, Fault):
            return reply
        code = str(reply.c)
        if code != "0":
            detail = f"c={code}" + (f": {reply.m}" if reply.m else "")
            return api_error_fault(
                response, f"aholo API error ({detail})", auth=code in ("401", "403")
            )
        if (status_fault := fault_for_status(response, self.kind)) is not None:
            return status_fault
        return observe_listed(request.task_ids, reply.d or (), lambda t: t.taskId, _observe)


def _observe(task: _Task) -> Observation:
    upstream = {"status": task.status}
    entry = _STATES.get(task.status)
    if entry is None:
        return unrecognized_status(task.taskId, task.status, upstream)
    state, message = entry
    result: Result | None = None
    error: ErrorInfo | None = None
    if state is State.SUCCEEDED:
        found = task.result or _TaskResult()
        files = {name: path for name, field in _RESULT_FILES if (path := getattr(found, field))}
        result = Result(urls=tuple(files.values()), files=files)
    elif state is State.FAILED:
        error = ErrorInfo("upstream_failed", "task failed")
    return Observation(
        task.taskId, state, message=message, result=result, error=error, upstream=upstream
    )
