"""The five upstream protocols: verify a status request, render tasks natively.

Each :class:`Protocol` turns one :class:`Call` (what arrived over HTTP) into
one :class:`Reply` (what to send back), reading tasks from a
:class:`~gateway.sim.simulator.Simulator`. The ``render_*`` functions are
pure: a :class:`~gateway.sim.timeline.TaskView` in, the provider's JSON
object out. Envelopes, error codes and field names follow the upstream docs
in ``docs/providers/``; each section below cites its doc.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import msgspec

from gateway.core.model import State
from gateway.sim.simulator import Simulator
from gateway.sim.timeline import TaskView

__all__ = [
    "PROTOCOLS",
    "AholoProtocol",
    "AilabProtocol",
    "Call",
    "GenpicProtocol",
    "Protocol",
    "Reply",
    "TryonProtocol",
    "VideoprocProtocol",
    "aholo_sign",
    "genpic_signature",
    "render_aholo",
    "render_ailab",
    "render_genpic",
    "render_tryon",
    "render_videoproc",
]

_encode = msgspec.json.Encoder().encode


class Call(msgspec.Struct, frozen=True):
    """One status request as it arrived.

    ``headers`` keys are lower-case; ``query`` keeps the first value of each
    parameter; ``base_url`` is ``scheme://host`` as the client addressed us,
    so generated result URLs are absolute and reachable.
    """

    method: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    base_url: str


class Reply(msgspec.Struct, frozen=True):
    """What to answer; ``task_ids`` are the ids the request named (for stats)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    task_ids: tuple[str, ...] = ()


class Protocol(ABC):
    """One simulated upstream's status endpoint."""

    provider: ClassVar[str]

    @abstractmethod
    def respond(self, call: Call, sim: Simulator) -> Reply:
        """Verify ``call`` and answer it the way the real upstream would."""

    @abstractmethod
    def task_ids(self, call: Call) -> tuple[str, ...]:
        """The ids ``call`` asks about (``()`` if unreadable); for faulted requests' stats."""


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _string_list(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


# --- ailab (docs/providers/ailab.md) -------------------------------

_AILAB_STATUS: Final = {State.QUEUED: 0, State.RUNNING: 1, State.SUCCEEDED: 2}
_AILAB_OK_DETAIL: Final = {"status_code": 200, "code": "", "code_message": "", "message": ""}


def render_ailab(view: TaskView, base_url: str) -> dict[str, Any]:
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
        return _encode(
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
        body = _json_object(call.body)
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


# --- aholo (docs/providers/aholo.md) ---------------------------------------

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


def render_aholo(view: TaskView, base_url: str) -> dict[str, Any]:
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
    return Reply(200, _encode({"c": code, "m": reason, "d": None, "f": ""}), task_ids=ids)


class AholoProtocol(Protocol):
    """``POST /v2/aholo/project/task/list/by-ids?appuid=&appkey=&timestamp=&sign=``
    with a JSON array of ids; errors are HTTP 200 with ``c != "0"``."""

    provider = "aholo"
    _QUERY_PARAMETERS: Final = ("appuid", "appkey", "timestamp", "sign")

    @staticmethod
    def _requested(call: Call) -> tuple[str, ...] | None:
        """The body's array of ids, or ``None`` if it is not one."""
        try:
            return _string_list(msgspec.json.decode(call.body))
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
        return Reply(200, _encode({"c": "0", "d": tasks, "m": None, "f": ""}), task_ids=ids)


# --- tryon (docs/providers/tryon.md) ------------------------------------------

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


def render_tryon(view: TaskView, open_id: str) -> dict[str, Any]:
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
    return Reply(200, _encode(envelope), task_ids=ids)


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


# --- genpic (docs/providers/genpic.md) --------------------------------

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


def render_genpic(view: TaskView, base_url: str) -> dict[str, Any]:
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
    return Reply(200, _encode(body), task_ids=ids)


class GenpicProtocol(Protocol):
    """``POST {base}`` with JSON ``{Action, PublicKey, Signature, request_uuid,
    TaskUIDs}``; errors are HTTP 200 with ``RetCode != 0``."""

    provider = "genpic"

    def task_ids(self, call: Call) -> tuple[str, ...]:
        params = _json_object(call.body)
        return (None if params is None else _string_list(params.get("TaskUIDs"))) or ()

    def respond(self, call: Call, sim: Simulator) -> Reply:
        config = sim.config
        params = _json_object(call.body)
        if params is None:
            return _genpic_error("", 230, "Params not available: body must be a JSON object", ())
        uids = _string_list(params.get("TaskUIDs"))
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
        return Reply(200, _encode(body), task_ids=ids)


# --- videoproc (docs/providers/videoproc.md) -------------------------------------------

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


def render_videoproc(view: TaskView) -> dict[str, Any]:
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


_VIDEOPROC_NOT_FOUND: Final = _encode({"detail": "Task not found"})


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
        return Reply(200, _encode(render_videoproc(view)), task_ids=(task_id,))


PROTOCOLS: Final[Mapping[str, type[Protocol]]] = {
    protocol.provider: protocol
    for protocol in (
        AilabProtocol,
        AholoProtocol,
        TryonProtocol,
        GenpicProtocol,
        VideoprocProtocol,
    )
}
