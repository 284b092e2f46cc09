"""The simulated videoproc upstream: verify a status request, render a task natively.

Envelopes, error codes and field names follow docs/providers/videoproc.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from gateway.core.model import State
from gateway.sim.protocols.base import Call, Protocol, Reply, encode_json
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskMoment

__all__ = ["VIDEOPROC_DEFAULT_ERROR", "VideoprocProtocol", "render_videoproc"]

_VIDEO_INFO: Final = {"title": "示例视频", "duration": 300, "uploader": "上传者"}
_VIDEOPROC_MESSAGES: Final = {
    State.QUEUED: "等待处理",
    State.RUNNING: "正在下载视频...",
    State.SUCCEEDED: "处理完成！",
}
VIDEOPROC_DEFAULT_ERROR: Final = "下载失败: HTTP 404"
_VIDEOPROC_FILE_KINDS: Final = (("video", "mp4"), ("audio", "mp3"))


def _naive_iso(epoch_s: float) -> str:
    """The doc's timestamps look like ``2024-01-01T12:00:00`` (no zone); we write UTC."""
    return datetime.fromtimestamp(epoch_s, UTC).replace(tzinfo=None).isoformat("T", "seconds")


def render_videoproc(view: TaskMoment) -> dict[str, Any]:
    """A TaskStatusResponse: ``status`` processing (queued or running) /
    completed / error, ``progress``, ``message``, ``created_at``,
    ``completed_at`` once terminal, ``files`` as relative ``/api/download/``
    paths, ``video_info``, and ``error`` on error."""
    step = view.step
    state = step.state
    body: dict[str, Any] = {"task_id": view.task_id}
    if state is State.QUEUED or state is State.RUNNING:
        progress = 0 if state is State.QUEUED else (step.progress or 0)
        body.update(
            status="processing",
            progress=progress,
            message=step.message or _VIDEOPROC_MESSAGES[state],
            created_at=_naive_iso(view.created_wall),
            video_info=dict(_VIDEO_INFO) if state is State.RUNNING else {},
            files={},
        )
    elif state is State.SUCCEEDED:
        if step.result is not None:
            names = [kind for kind, _ in _VIDEOPROC_FILE_KINDS]
            names += [f"file{n}" for n in range(len(names) + 1, len(step.result) + 1)]
            files = dict(zip(names, step.result, strict=True))
        else:
            files = {
                kind: f"/api/download/{kind}_{view.task_id}.{extension}"
                for kind, extension in _VIDEOPROC_FILE_KINDS
            }
        body.update(
            status="completed",
            progress=100,
            message=step.message or _VIDEOPROC_MESSAGES[state],
            created_at=_naive_iso(view.created_wall),
            completed_at=_naive_iso(view.step_wall),
            video_info=dict(_VIDEO_INFO),
            files=files,
        )
    else:
        error = step.message or VIDEOPROC_DEFAULT_ERROR
        body.update(
            status="error",
            progress=step.progress or 0,
            message=f"处理失败: {error}",
            created_at=_naive_iso(view.created_wall),
            completed_at=_naive_iso(view.step_wall),
            video_info={},
            files={},
            error=error,
        )
    if step.native is not None:
        body["status"] = step.native
    return body


_VIDEOPROC_NOT_FOUND: Final = encode_json({"detail": "Task not found"})


class VideoprocProtocol(Protocol):
    """``GET /api/status/{task_id}``, no authentication; 404 for an unknown id."""

    provider = "videoproc"

    def task_ids(self, call: Call) -> tuple[str, ...]:
        return (call.path_params["task_id"],)

    def respond(self, call: Call, sim: Simulator) -> Reply:
        task_id = call.path_params["task_id"]
        view = sim.view(self.provider, task_id)
        if view is None:
            return Reply(404, _VIDEOPROC_NOT_FOUND, task_ids=(task_id,))
        return Reply(200, encode_json(render_videoproc(view)), task_ids=(task_id,))
