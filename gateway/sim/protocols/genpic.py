"""The simulated genpic upstream: verify a status request, render a task natively.

Envelopes, error codes and field names follow docs/providers/genpic.md.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from gateway.core.model import State
from gateway.sim.protocols.base import Call, Protocol, Reply, encode_json, json_object, string_list
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskMoment

__all__ = ["GENPIC_FAILURE_CODE", "GenpicProtocol", "genpic_signature", "render_genpic"]

_GENPIC_ACTION: Final = "ListGenerateTaskDetail"
_GENPIC_STATUS: Final = {
    State.QUEUED: "Queuing",
    State.RUNNING: "Running",
    State.SUCCEEDED: "Finished",
}
GENPIC_FAILURE_CODE: Final = 1
"""``TaskErrorCode`` of a failed task ("0 indicates normal operation")."""


def _signature_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def genpic_signature(params: Mapping[str, Any], private_key: str) -> str:
    """``Signature``: sha1 (lower-case hex) of every parameter but ``Signature``
    as ``key + value``, keys sorted, lists flattened as ``Key.0``, ``Key.1``…,
    followed by the private key."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if key == "Signature":
            continue
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                flat[f"{key}.{index}"] = _signature_text(item)
        else:
            flat[key] = _signature_text(value)
    text = "".join(key + flat[key] for key in sorted(flat)) + private_key
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def render_genpic(view: TaskMoment, base_url: str) -> dict[str, Any]:
    """A TaskDetail: ``TaskStatus`` Queuing / Running / Finished / Error, the
    ``FinalPictureUrls`` once finished, ``TaskErrorMsg``/``TaskErrorCode`` on error."""
    step = view.step
    status = _GENPIC_STATUS.get(step.state, "Error")
    urls: list[str] = []
    if step.state is State.SUCCEEDED:
        urls = (
            list(step.result)
            if step.result is not None
            else [f"{base_url}/genpic/files/{view.task_id}/1.png"]
        )
    failed = status == "Error"
    return {
        "TaskUid": view.task_id,
        "TaskType": "TaskGeneratePicture",
        "TaskStatus": step.native if step.native is not None else status,
        "FinalPictureUrls": urls,
        "TaskErrorMsg": (step.message or "task failed") if failed else "",
        "TaskErrorCode": GENPIC_FAILURE_CODE if failed else 0,
    }


def _genpic_error(action: str, code: int, message: str, ids: tuple[str, ...]) -> Reply:
    body = {"Action": f"{action}Response", "RetCode": code, "Message": message}
    return Reply(200, encode_json(body), task_ids=ids)


class GenpicProtocol(Protocol):
    """``POST {base}`` with JSON ``{Action, PublicKey, Signature, request_uuid,
    TaskUIDs}``; errors are HTTP 200 with ``RetCode != 0``."""

    provider = "genpic"

    def task_ids(self, call: Call) -> tuple[str, ...]:
        params = json_object(call.body)
        return (None if params is None else string_list(params.get("TaskUIDs"))) or ()

    def respond(self, call: Call, sim: Simulator) -> Reply:
        config = sim.config
        params = json_object(call.body)
        if params is None:
            return _genpic_error("", 230, "Params not available: body must be a JSON object", ())
        uids = string_list(params.get("TaskUIDs"))
        ids = uids or ()
        action = params.get("Action")
        if action != _GENPIC_ACTION:
            name = action if isinstance(action, str) else ""
            return _genpic_error(name, 160, "Action not found", ids)
        public_key = params.get("PublicKey")
        if not isinstance(public_key, str) or not hmac.compare_digest(
            public_key.encode(), config.genpic_public_key.encode()
        ):
            return _genpic_error(action, 172, "PublicKey not found", ids)
        signature = params.get("Signature")
        expected = genpic_signature(params, config.genpic_private_key)
        if not isinstance(signature, str) or not hmac.compare_digest(
            signature.encode(), expected.encode()
        ):
            return _genpic_error(action, 171, "Signature VerifyAC Error", ids)
        if uids is None:
            return _genpic_error(action, 230, "Params [TaskUIDs] not available", ids)
        details = []
        for uid in uids:
            view = sim.view(self.provider, uid)
            if view is not None:
                details.append(render_genpic(view, call.base_url))
        body = {
            "Action": f"{action}Response",
            "RetCode": 0,
            "Message": "",
            "TaskDetailList": details,
        }
        return Reply(200, encode_json(body), task_ids=ids)
