"""A pollcast provider plugin: kind ``clipstatus``.

It polls a clip-processing service that answers like videoproc's
``GET {base}/api/status/{task_id}`` (``status`` processing / completed /
error, ``progress``, ``message``, relative ``files``; 404 for an unknown id),
using only the public adapter contract of :mod:`gateway.providers.base`:
build a request for task ids, parse a reply into one observation per id,
never raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

import msgspec

from gateway.core.model import ErrorInfo, Fault, FaultKind, Observation, Result, State
from gateway.providers.base import (
    Adapter,
    ProviderDefaults,
    UpstreamRequest,
    UpstreamResponse,
    fault_for_status,
    fault_observations,
)

__all__ = ["ClipStatusAdapter", "ClipStatusSettings"]


class ClipStatusSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The provider table's own keys (any other key is a polling policy override)."""

    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")]


class _Status(msgspec.Struct, frozen=True):
    status: str
    progress: float | None = None
    message: str | None = None
    files: dict[str, str] | None = None
    error: str | None = None


_STATES = {"processing": State.RUNNING, "completed": State.SUCCEEDED, "error": State.FAILED}


class ClipStatusAdapter(Adapter):
    """One task per request; no credentials."""

    kind = "clipstatus"
    Settings = ClipStatusSettings
    defaults = ProviderDefaults(interval_s=2.0, max_interval_s=10.0)
    settings: ClipStatusSettings

    @property
    def root(self) -> str:
        return self.settings.base_url.rstrip("/")

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        if len(task_ids) != 1:
            raise ValueError(f"clipstatus queries one task per request, got {len(task_ids)}")
        [task_id] = task_ids
        return UpstreamRequest(
            method="GET",
            url=f"{self.root}/api/status/{quote(task_id, safe='')}",
            task_ids=(task_id,),
        )

    def parse(self, request: UpstreamRequest, response: UpstreamResponse) -> list[Observation]:
        [task_id] = request.task_ids
        if response.status_code == 404:
            error = ErrorInfo("not_found", "upstream does not know this task id")
            return [Observation(task_id, State.UNKNOWN, error=error)]
        if (fault := fault_for_status(response, self.name)) is not None:
            return fault_observations(request.task_ids, fault)
        try:
            reply = msgspec.json.decode(response.body, type=_Status)
        except msgspec.DecodeError as exc:
            fault = Fault(FaultKind.MALFORMED, f"{self.name} reply: {exc}")
            return fault_observations(request.task_ids, fault)
        return [self._observe(task_id, reply)]

    def _observe(self, task_id: str, reply: _Status) -> Observation:
        upstream: dict[str, Any] = {"status": reply.status}
        state = _STATES.get(reply.status, State.UNKNOWN)
        progress = None if reply.progress is None else round(min(max(reply.progress, 0), 100))
        result = None
        error = None
        if state is State.SUCCEEDED:
            files = {
                name: path if path.startswith(("http://", "https://")) else self.root + path
                for name, path in (reply.files or {}).items()
            }
            result = Result(urls=tuple(files.values()), files=files)
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
