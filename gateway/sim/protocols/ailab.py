"""The simulated ailab upstream: verify a status request, render a task natively.

Envelopes, error codes and field names follow docs/providers/ailab.md.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Mapping
from typing import Any, Final

from gateway.core.model import State
from gateway.sim.protocols.base import Call, Protocol, Reply, encode_json, json_object
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskMoment

__all__ = ["AilabProtocol", "render_ailab"]

_AILAB_STATUS: Final = {State.QUEUED: 0, State.RUNNING: 1, State.SUCCEEDED: 2}
_AILAB_OK_DETAIL: Final = {"status_code": 200, "code": "", "code_message": "", "message": ""}


def render_ailab(view: TaskMoment, base_url: str) -> dict[str, Any]:
    """The fields after the envelope: ``task_status`` (0 queued, 1 running,
    2 done, -1 failed — every other terminal state is a failure too) and, once
    done, ``result``: a list of result URLs."""
    step = view.step
    status = step.native if step.native is not None else _AILAB_STATUS.get(step.state, -1)
    fields: dict[str, Any] = {"task_status": status}
    if step.state is State.SUCCEEDED:
        fields["result"] = (
            list(step.result)
            if step.result is not None
            else [f"{base_url}/ailab/files/{view.task_id}/result{n}.jpg" for n in (1, 2)]
        )
    return fields


class AilabProtocol(Protocol):
    """``GET /common/query-async-task-result?task_id=`` (the doc's OpenAPI) and
    ``POST`` with JSON ``{"task_id"}`` (the doc's prose); header ``ailabapi-api-key``."""

    provider = "ailab"

    def __init__(self) -> None:
        self._request_numbers = itertools.count(1)

    def _envelope(
        self, status: int, error_msg: str, detail: Mapping[str, Any], **fields: Any
    ) -> bytes:
        number = next(self._request_numbers)
        return encode_json(
            {
                "request_id": f"{number:09d}",
                "log_id": f"{number:016x}",
                "error_code": 0 if status == 200 else status,
                "error_msg": error_msg,
                "error_detail": detail,
                **fields,
            }
        )

    def task_ids(self, call: Call) -> tuple[str, ...]:
        task_id = self._task_id(call)
        return (task_id,) if task_id else ()

    @staticmethod
    def _task_id(call: Call) -> str | None:
        if call.method == "GET":
            return call.query.get("task_id") or None
        body = json_object(call.body)
        value = None if body is None else body.get("task_id")
        return value if isinstance(value, str) and value else None

    def respond(self, call: Call, sim: Simulator) -> Reply:
        task_id = self._task_id(call)
        ids = (task_id,) if task_id else ()
        key = call.headers.get("ailabapi-api-key", "")
        if not hmac.compare_digest(key.encode(), sim.config.ailab_api_key.encode()):
            detail = {
                "status_code": 401,
                "code": "ERROR_INVALID_API_KEY",
                "code_message": "Invalid API key",
                "message": "The ailabapi-api-key header is missing or invalid",
            }
            return Reply(401, self._envelope(401, "Unauthorized", detail), task_ids=ids)
        view = sim.view(self.provider, task_id) if task_id else None
        if view is None:
            # The doc's "错误响应" example, verbatim.
            detail = {
                "status_code": 400,
                "code": "ERROR_INVALID_TASK_ID",
                "code_message": "Invalid task ID",
                "message": "The provided task_id is invalid or expired",
            }
            return Reply(400, self._envelope(400, "Invalid task_id", detail), task_ids=ids)
        fields = render_ailab(view, call.base_url)
        return Reply(200, self._envelope(200, "", _AILAB_OK_DETAIL, **fields), task_ids=ids)
