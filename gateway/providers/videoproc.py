"""videoproc — ``GET /api/status/{task_id}`` (docs/providers/videoproc.md).

One task per request, no authentication. The reply is the doc's
``TaskStatusResponse``: ``status`` (processing / completed / error),
``progress`` 0–100, ``message``, ``files`` (file kind → download path relative
to the service) and ``video_info``. "404 Not Found: 任务不存在" (no such task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.exceptions import InvalidTaskKey
from gateway.providers._reply import (
    NOT_FOUND,
    BaseUrl,
    ReplyAdapter,
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

__all__ = ["VideoprocAdapter", "VideoprocSettings"]


class VideoprocSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl


class _Reply(msgspec.Struct, frozen=True):
    status: str
    progress: int | float | None = None
    message: str | None = None
    files: dict[str, str] | None = None
    video_info: dict[str, Any] | None = None
    error: str | None = None


_STATES = {"processing": State.RUNNING, "completed": State.SUCCEEDED, "error": State.FAILED}


class VideoprocAdapter(ReplyAdapter):
    """Adapter for videoproc's task status endpoint (one task id per request)."""

    kind = "videoproc"
    Settings = VideoprocSettings
    # "建议每2秒轮询一次" (poll every 2 seconds).
    defaults = ProviderDefaults(interval_s=2.0, max_interval_s=10.0)
    settings: VideoprocSettings

    def check_task_id(self, task_id: str) -> None:
        # The id is a URL path segment, and "." / ".." are dot-segments that
        # RFC 3986 §5.2.4 removes: they could never reach the status route.
        if task_id in (".", ".."):
            raise InvalidTaskKey(
                "videoproc task ids cannot be '.' or '..' (they are URL path segments)",
                field="task_id",
            )

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        task_id = only_task_id(task_ids, self.kind)
        return UpstreamRequest(
            method="GET",
            url=f"{self.root}/api/status/{quote(task_id, safe='')}",
            task_ids=(task_id,),
        )

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        task_id = request.task_ids[0]
        if response.status_code == 404:
            return {task_id: Observation(task_id, State.UNKNOWN, error=NOT_FOUND)}
        reply = self.decode_or_fault(response, _Reply)
        if isinstance(reply, Fault):
            return reply
        if (status_fault := fault_for_status(response, self.kind)) is not None:
            return status_fault
        return {task_id: self._observe(task_id, reply)}

    def _observe(self, task_id: str, reply: _Reply) -> Observation:
        upstream: dict[str, Any] = {"status": reply.status}
        if reply.progress is not None:
            upstream["progress"] = reply.progress
        state = _STATES.get(reply.status)
        if state is None:
            return unrecognized_status(task_id, reply.status, upstream)
        progress = None if reply.progress is None else round(min(max(reply.progress, 0), 100))
        result: Result | None = None
        error: ErrorInfo | None = None
        if state is State.SUCCEEDED:
            files = {
                kind: resolve_url(self.root, path) for kind, path in (reply.files or {}).items()
            }
            meta = {} if reply.video_info is None else {"video_info": reply.video_info}
            result = Result(urls=tuple(files.values()), files=files, meta=meta)
        elif state is State.FAILED:
            error = ErrorInfo("upstream_failed", reply.error or reply.message or "task failed")
        return Observation(
            task_id,
            state,
            progress=progress,
            message=reply.message,
            result=result,
            error=error,
            upstream=upstream,
        )
