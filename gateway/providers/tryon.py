"""tryon — "Query task results" (docs/providers/tryon.md).

One task per request: ``POST {base}/api/inf/get_result`` with the JSON body
``{"openId", "apiKey", "infId"}`` (``infId`` is a ``long``). "Each call will
consume 0.1 coins" and "too frequent will be blocked by the firewall ip": the
defaults poll once a minute, like the doc's own loop (``time.sleep(60)``).

The reply is ``{"code": 200, "msg": "ok", "data": {...}}``; ``data`` also
carries account fields (``openId``, ``cost``, body measurements…), none of
which is forwarded: ``upstream`` keeps ``state`` and ``position`` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec

from gateway.core.model import ErrorInfo, Fault, Observation, Result, State
from gateway.exceptions import InvalidTaskKey
from gateway.providers._reply import (
    NOT_FOUND,
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

__all__ = ["TryonAdapter", "TryonSettings"]

_INF_ID_RE = re.compile(r"[0-9]{1,19}")
_LONG_MAX = 2**63 - 1


class TryonSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    open_id: Credential
    api_key: Credential
    oss_base: BaseUrl  # the doc's ``OssUrl``: result paths are appended to it


class _Data(msgspec.Struct, frozen=True):
    state: int
    position: int | None = None
    showUrl: str | None = None
    body_url: str | None = None
    infInfo: str | None = None
    infInfoEn: str | None = None


class _Reply(msgspec.Struct, frozen=True):
    code: int
    msg: str | None = None
    data: _Data | None = None


class TryonAdapter(ReplyAdapter):
    """Adapter for tryon's paid result query (one integer ``infId`` per request)."""

    kind = "tryon"
    Settings = TryonSettings
    # "Tasks usually take between 10 minutes and 90 seconds"; the doc polls every
    # 60 s, and every call costs 0.1 coins, so keep the rate and fan-out low.
    defaults = ProviderDefaults(
        interval_s=60.0,
        max_interval_s=300.0,
        concurrency=2,
        rate_per_s=2.0,
        timeout_s=15.0,
        cost_per_call=0.1,
        typical_duration_s=(90.0, 600.0),
    )
    settings: TryonSettings

    def check_task_id(self, task_id: str) -> None:
        if not _INF_ID_RE.fullmatch(task_id):
            raise InvalidTaskKey("tryon task ids are integers (infId)", field="task_id")
        if int(task_id) > _LONG_MAX:
            raise InvalidTaskKey(
                "tryon task id does not fit infId (a 64-bit integer)", field="task_id"
            )

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        """Raises :class:`InvalidTaskKey` for an id :meth:`check_task_id` refuses."""
        task_id = only_task_id(task_ids, self.kind)
        self.check_task_id(task_id)
        body = {
            "openId": self.settings.open_id,
            "apiKey": self.settings.api_key,
            "infId": int(task_id),
        }
        return UpstreamRequest(
            method="POST",
            url=f"{self.root}/api/inf/get_result",
            task_ids=(task_id,),
            headers=(("Content-Type", "application/json"),),
            body=msgspec.json.encode(body),
        )

    def secret_values(self) -> tuple[str, ...]:
        return (self.settings.open_id, self.settings.api_key)

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        task_id = request.task_ids[0]
        reply = self.decode_or_fault(response, _Reply)
        if isinstance(reply, Fault):
            return reply
        if reply.code == 404:
            return {task_id: Observation(task_id, State.UNKNOWN, error=NOT_FOUND)}
        if reply.code != 200:
            detail = f"code {reply.code}" + (f": {reply.msg}" if reply.msg else "")
            return api_error_fault(
                response, f"tryon API error ({detail})", auth=reply.code in (401, 403)
            )
        if (status_fault := fault_for_status(response, self.kind)) is not None:
            return status_fault
        if reply.data is None:
            raise MalformedReply("field 'data' is missing or null although code is 200")
        return {task_id: self._observe(task_id, reply.data)}

    def _observe(self, task_id: str, data: _Data) -> Observation:
        position = data.position or 0
        upstream = {"state": data.state, "position": data.position}
        match data.state:
            case 1 if position > 0:
                return Observation(task_id, State.QUEUED, position=position, upstream=upstream)
            case 1:
                # Position 0: nothing ahead of it, so the task is being worked on.
                return Observation(task_id, State.RUNNING, upstream=upstream)
            case 2:
                # "pose_url = OssUrl+data['body_url']; out_url = OssUrl+data['showUrl']"
                paths = {"show": data.showUrl, "body": data.body_url}
                files = {name: self._oss_url(path) for name, path in paths.items() if path}
                result = Result(urls=tuple(files.values()), files=files)
                return Observation(task_id, State.SUCCEEDED, result=result, upstream=upstream)
            case -1:
                text = data.infInfoEn or data.infInfo or "task failed"
                error = ErrorInfo("upstream_failed", text)
                return Observation(task_id, State.FAILED, error=error, upstream=upstream)
            case -2:
                error = ErrorInfo("insufficient_balance", "not enough coins")
                return Observation(task_id, State.FAILED, error=error, upstream=upstream)
        return unrecognized_status(task_id, data.state, upstream)

    def _oss_url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.settings.oss_base + path
