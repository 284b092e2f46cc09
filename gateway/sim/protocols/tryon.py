"""The simulated tryon upstream: verify a status request, render a task natively.

Envelopes, error codes and field names follow docs/providers/tryon.md.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

import msgspec

from gateway.core.model import State
from gateway.sim.protocols.base import Call, Protocol, Reply, encode_json
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskMoment

__all__ = ["TRYON_DEFAULT_FAILURE", "TryonProtocol", "render_tryon"]

TRYON_DEFAULT_FAILURE: Final = (
    "没有检测到脸部,请上传正确的人体试衣照片",
    "No face was detected. Please upload the correct human fitting photo.",
)
"""The doc's failure example (``infInfo``, ``infInfoEn``)."""


def _tryon_data(task_id: int, open_id: str, **fields: Any) -> dict[str, Any]:
    """The doc's ``data`` object with its example's constant fields."""
    return {
        "bmi": 0.000402367,
        "body_url": "",
        "cost": 5.0,
        "hairOcclued": 0,
        "height": 0.0,
        "id": task_id,
        "imgUrl1": "",
        "imgUrl2": "",
        "imgUrl3": "",
        "infInfo": "",
        "infInfoEn": "",
        "ipId": "",
        "isApi": 1,
        "modelBmi": 0.0,
        "openId": open_id,
        "position": 0,
        "shareUser": -1,
        "showUrl": "",
        "state": 1,
        "tempId": 208,
        "useInfId": -1,
        "weight": 0.0,
        **fields,
    }


def render_tryon(view: TaskMoment, open_id: str) -> dict[str, Any]:
    """The ``data`` object: ``state`` 1 while queued (``position`` >= 1) or
    running (``position`` 0), 2 done with ``body_url``/``showUrl`` relative
    to the caller's OSS base, -1 failed with ``infInfo``/``infInfoEn``."""
    step = view.step
    task_id = int(view.task_id)
    fields: dict[str, Any]
    if step.state is State.QUEUED:
        fields = {"state": 1, "position": max(1, step.position or 1)}
    elif step.state is State.RUNNING:
        fields = {"state": 1, "position": 0}
    elif step.state is State.SUCCEEDED:
        body_url, show_url = f"results/{task_id}/body.png", f"results/{task_id}/show.png"
        if step.result:
            body_url = step.result[0]
            show_url = step.result[1] if len(step.result) > 1 else body_url
        fields = {"state": 2, "body_url": body_url, "showUrl": show_url}
    else:
        info, info_en = TRYON_DEFAULT_FAILURE
        if step.message is not None:
            info = info_en = step.message
        fields = {"state": -1, "infInfo": info, "infInfoEn": info_en}
    if step.native is not None:
        fields["state"] = step.native
    return _tryon_data(task_id, open_id, **fields)


class _TryonQuery(msgspec.Struct):
    openId: str
    apiKey: str
    infId: int | str


_tryon_query_decoder = msgspec.json.Decoder(_TryonQuery)


def _tryon_reply(code: int, msg: str, ids: tuple[str, ...], data: Any = None) -> Reply:
    envelope: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        envelope["data"] = data
    return Reply(200, encode_json(envelope), task_ids=ids)


class TryonProtocol(Protocol):
    """``POST /api/inf/get_result`` with JSON ``{openId, apiKey, infId}`` (the
    doc's client sends ``data=json.dumps(params)`` with no Content-Type, so
    the body is read as JSON whatever the header says). Every authenticated
    call costs 0.1 coins; without them ``data.state`` is -2."""

    provider = "tryon"

    def _query(self, call: Call) -> _TryonQuery | None:
        try:
            return _tryon_query_decoder.decode(call.body)
        except msgspec.DecodeError:
            return None

    def task_ids(self, call: Call) -> tuple[str, ...]:
        query = self._query(call)
        return () if query is None else (str(query.infId),)

    def respond(self, call: Call, sim: Simulator) -> Reply:
        config = sim.config
        query = self._query(call)
        if query is None:
            return _tryon_reply(400, "invalid request body: expected openId, apiKey, infId", ())
        task_id = str(query.infId)
        ids = (task_id,)
        if not (
            hmac.compare_digest(query.openId.encode(), config.tryon_open_id.encode())
            and hmac.compare_digest(query.apiKey.encode(), config.tryon_api_key.encode())
        ):
            return _tryon_reply(401, "invalid openId or apiKey", ids)
        if not (task_id.isascii() and task_id.isdigit()):
            return _tryon_reply(404, "task not found", ids)
        if not sim.charge_tryon():
            return _tryon_reply(200, "ok", ids, _tryon_data(int(task_id), query.openId, state=-2))
        view = sim.view(self.provider, task_id)
        if view is None:
            return _tryon_reply(404, "task not found", ids)
        return _tryon_reply(200, "ok", ids, render_tryon(view, query.openId))
