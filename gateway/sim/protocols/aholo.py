"""The simulated aholo upstream: verify a status request, render a task natively.

Envelopes, error codes and field names follow docs/providers/aholo.md.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

import msgspec

from gateway.core.model import State
from gateway.sim.protocols.base import Call, Protocol, Reply, encode_json, string_list
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskMoment

__all__ = ["AholoProtocol", "aholo_sign", "render_aholo"]

_AHOLO_STATUS: Final = {
    State.QUEUED: 0,
    State.RUNNING: 2,
    State.SUCCEEDED: 3,
    State.FAILED: 4,
    State.CANCELLED: 5,
    State.EXPIRED: 6,
    State.REJECTED: 7,
}
_AHOLO_ASSETS: Final = (
    ("plyPath", "point_cloud.ply"),
    ("spzPath", "point_cloud_compressed.spz"),
    ("sogPath", "point_cloud.sog"),
)


def aholo_sign(app_secret: str, app_key: str, appuid: str, timestamp: str) -> str:
    """``sign = md5(appSecret + appKey + appuid + timestamp)``, lower-case hex."""
    text = app_secret + app_key + appuid + timestamp
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def render_aholo(view: TaskMoment, base_url: str) -> dict[str, Any]:
    """A Task Object: ``taskId``, ``status`` (0 queued — or 1 waiting with
    ``native`` —, 2 running — or 8 preprocessing —, 3 success, 4 failed,
    5 cancelled, 6 timed out, 7 rejected) and ``result`` (asset URLs on
    success, else ``null``)."""
    step = view.step
    status = step.native if step.native is not None else _AHOLO_STATUS[step.state]
    result: dict[str, str] | None = None
    if step.state is State.SUCCEEDED:
        if step.result is not None:
            result = {name: url for (name, _), url in zip(_AHOLO_ASSETS, step.result, strict=False)}
        else:
            result = {
                name: f"{base_url}/aholo/files/{view.task_id}/{filename}"
                for name, filename in _AHOLO_ASSETS
            }
    return {"taskId": view.task_id, "status": status, "result": result}


def _aholo_refusal(code: str, reason: str, ids: tuple[str, ...]) -> Reply:
    return Reply(200, encode_json({"c": code, "m": reason, "d": None, "f": ""}), task_ids=ids)


class AholoProtocol(Protocol):
    """``POST /v2/aholo/project/task/list/by-ids?appuid=&appkey=&timestamp=&sign=``
    with a JSON array of ids; errors are HTTP 200 with ``c != "0"``."""

    provider = "aholo"
    _QUERY_PARAMETERS: Final = ("appuid", "appkey", "timestamp", "sign")

    @staticmethod
    def _requested(call: Call) -> tuple[str, ...] | None:
        """The body's array of ids, or ``None`` if it is not one."""
        try:
            return string_list(msgspec.json.decode(call.body))
        except msgspec.DecodeError:
            return None

    def task_ids(self, call: Call) -> tuple[str, ...]:
        return self._requested(call) or ()

    def respond(self, call: Call, sim: Simulator) -> Reply:
        config = sim.config
        requested = self._requested(call)
        ids = requested or ()
        query = call.query
        missing = [name for name in self._QUERY_PARAMETERS if not query.get(name)]
        if missing:
            return _aholo_refusal("401", f"missing query parameter: {', '.join(missing)}", ids)
        if query["appkey"] != config.aholo_app_key:
            return _aholo_refusal("401", "invalid appkey", ids)
        if query["appuid"] != config.aholo_appuid:
            return _aholo_refusal("401", "invalid appuid", ids)
        timestamp = query["timestamp"]
        if not (timestamp.isascii() and timestamp.isdigit()):
            return _aholo_refusal("401", "timestamp must be Unix milliseconds", ids)
        skew_ms = abs(sim.wall_clock() * 1000 - int(timestamp))
        if skew_ms > config.aholo_timestamp_tolerance_s * 1000:
            return _aholo_refusal("401", "timestamp expired", ids)
        expected = aholo_sign(
            config.aholo_app_secret, config.aholo_app_key, config.aholo_appuid, timestamp
        )
        if not hmac.compare_digest(query["sign"].encode(), expected.encode()):
            return _aholo_refusal("401", "sign mismatch", ids)
        if requested is None:
            return _aholo_refusal("400", "request body must be a JSON array of task ids", ids)
        # An id the upstream does not know (or does not show yet) is simply
        # absent from "d"; the doc's client keeps waiting in that case.
        tasks = []
        for task_id in requested:
            view = sim.view(self.provider, task_id)
            if view is not None:
                tasks.append(render_aholo(view, call.base_url))
        return Reply(200, encode_json({"c": "0", "d": tasks, "m": None, "f": ""}), task_ids=ids)
