"""genpic — ``ListGenerateTaskDetail`` (docs/providers/genpic.md).

A batch upstream whose base URL *is* the endpoint: ``POST {base}`` with the
JSON body ``{"Action": "ListGenerateTaskDetail", "PublicKey", "Signature",
"request_uuid", "TaskUIDs": [...]}``. The reply is ``{"RetCode", "Action",
"Message", "TaskDetailList": [TaskDetail…]}``; ``RetCode != 0`` is an API error.
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

__all__ = ["GenpicAdapter", "GenpicSettings", "genpic_signature"]

ACTION = "ListGenerateTaskDetail"
# RetCodes that mean the credentials themselves are wrong: retrying cannot help.
_AUTH_RET_CODES = frozenset({171, 172})  # 171 signature error, 172 public key not found


class GenpicSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: BaseUrl
    public_key: Credential
    private_key: Credential


class _TaskDetail(msgspec.Struct, frozen=True):
    TaskUid: str
    TaskStatus: str
    FinalPictureUrls: list[str] | None = None
    TaskErrorMsg: str | None = None
    TaskErrorCode: int | None = None


class _Reply(msgspec.Struct, frozen=True):
    RetCode: int
    Message: str | None = None
    TaskDetailList: list[_TaskDetail] | None = None  # absent on error replies


# "TaskStatus … possible values: Queuing, Running, Finished, Error".
_STATES = {
    "Queuing": State.QUEUED,
    "Running": State.RUNNING,
    "Finished": State.SUCCEEDED,
    "Error": State.FAILED,
}


def genpic_signature(params: Mapping[str, str | Sequence[str]], private_key: str) -> str:
    """The request ``Signature``: lowercase hex SHA-1.

    Every parameter but ``Signature`` takes part; a list ``K`` becomes the keys
    ``K.0``, ``K.1``…; the keys are then sorted, each contributes ``key + value``,
    and the private key is appended last.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, str):
            pairs.append((key, value))
        else:
            pairs.extend((f"{key}.{index}", item) for index, item in enumerate(value))
    text = "".join(key + value for key, value in sorted(pairs)) + private_key
    return hashlib.sha1(text.encode()).hexdigest()


class GenpicAdapter(ReplyAdapter):
    """Adapter for genpic's batch task detail query (up to 50 ids per request)."""

    kind = "genpic"
    Settings = GenpicSettings
    defaults = ProviderDefaults(interval_s=5.0, max_interval_s=30.0, batch_size=50)
    settings: GenpicSettings

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        params: dict[str, str | Sequence[str]] = {
            "Action": ACTION,
            "PublicKey": self.settings.public_key,
            "request_uuid": request_id,
            "TaskUIDs": list(task_ids),
        }
        signature = genpic_signature(params, self.settings.private_key)
        body = {
            "Action": ACTION,
            "PublicKey": self.settings.public_key,
            "Signature": signature,
            "request_uuid": request_id,
            "TaskUIDs": list(task_ids),
        }
        return UpstreamRequest(
            method="POST",
            url=self.root,
            task_ids=tuple(task_ids),
            headers=(("Content-Type", "application/json"),),
            body=msgspec.json.encode(body),
        )

    def secret_values(self) -> tuple[str, ...]:
        return (self.settings.public_key, self.settings.private_key)

    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        reply = self.decode_or_fault(response, _Reply)
        if isinstance(reply, Fault):
            return reply
        if reply.RetCode != 0:
            detail = f"RetCode {reply.RetCode}" + (f": {reply.Message}" if reply.Message else "")
            return api_error_fault(
                response, f"genpic API error ({detail})", auth=reply.RetCode in _AUTH_RET_CODES
            )
        if (status_fault := fault_for_status(response, self.kind)) is not None:
            return status_fault
        details = reply.TaskDetailList or ()
        return observe_listed(request.task_ids, details, lambda d: d.TaskUid, _observe)


def _observe(detail: _TaskDetail) -> Observation:
    task_id = detail.TaskUid
    upstream = {"TaskStatus": detail.TaskStatus}
    state = _STATES.get(detail.TaskStatus)
    if state is None:
        return unrecognized_status(task_id, detail.TaskStatus, upstream)
    result: Result | None = None
    error: ErrorInfo | None = None
    if state is State.SUCCEEDED:
        result = Result(urls=tuple(detail.FinalPictureUrls or ()))
    elif state is State.FAILED:
        code = "upstream_failed" if detail.TaskErrorCode is None else str(detail.TaskErrorCode)
        error = ErrorInfo(code, detail.TaskErrorMsg or "task failed")
    return Observation(task_id, state, result=result, error=error, upstream=upstream)
