"""Fixed credentials, adapters built from them, and the checks every parse must pass."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from gateway.core.model import Fault, FaultKind, Observation
from gateway.providers.aholo import AholoAdapter, AholoSettings
from gateway.providers.ailab import AilabAdapter, AilabSettings
from gateway.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from gateway.providers.genpic import GenpicAdapter, GenpicSettings
from gateway.providers.tryon import TryonAdapter, TryonSettings
from gateway.providers.videoproc import VideoprocAdapter, VideoprocSettings

NOW_MS = 1_763_719_205_120
REQUEST_ID = "5f0c2b8e-3d7a-4c1e-9b2f-6a8d1e4c7b90"

AILAB_KEY = "ailab-key-Zx81Qm"
AHOLO_KEY, AHOLO_SECRET, AHOLO_UID = "aholo-appkey-77Tq", "aholo-secret-W3nV", "appuid-4410"
# The doc's own example openId, so a test would notice it travelling into an observation.
TRYON_OPEN_ID, TRYON_KEY = "ovB-x63dKsdfu8", "tryon-apikey-Lp2R"
OSS_BASE = "https://oss.example.com/"
GENPIC_PUBLIC, GENPIC_PRIVATE = "ALLak9M4cNdHXKOJAJJ4k8Hh1hZS2EgJF1D0FlPwfl", "genpic-private-Hh7c"


def ailab() -> AilabAdapter:
    return AilabAdapter(AilabSettings(base_url="https://api.aihairstyle.cn/", api_key=AILAB_KEY))


def aholo() -> AholoAdapter:
    settings = AholoSettings(
        base_url="https://openapi.kujiale.com",
        app_key=AHOLO_KEY,
        app_secret=AHOLO_SECRET,
        appuid=AHOLO_UID,
    )
    return AholoAdapter(settings)


def tryon() -> TryonAdapter:
    settings = TryonSettings(
        base_url="https://tryon.example.com",
        open_id=TRYON_OPEN_ID,
        api_key=TRYON_KEY,
        oss_base=OSS_BASE,
    )
    return TryonAdapter(settings)


def genpic() -> GenpicAdapter:
    settings = GenpicSettings(
        base_url="https://genpic.example.com/api/",
        public_key=GENPIC_PUBLIC,
        private_key=GENPIC_PRIVATE,
    )
    return GenpicAdapter(settings)


def videoproc() -> VideoprocAdapter:
    return VideoprocAdapter(VideoprocSettings(base_url="http://video.example.com:8080/"))


# kind → (adapter factory, task ids of one typical request)
CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "ailab": (ailab, ("7f3c9e",)),
    "aholo": (aholo, ("3FO4K4WBNNYV", "3FO4K4WBNNY2", "3FO4K4WBNNY3")),
    "tryon": (tryon, ("2880",)),
    "genpic": (genpic, ("taskuid1", "taskuid2")),
    "videoproc": (videoproc, ("123e4567-e89b-12d3-a456-426614174000",)),
}


def build(adapter: Adapter, task_ids: Sequence[str]) -> UpstreamRequest:
    return adapter.build_request(task_ids, now_ms=NOW_MS, request_id=REQUEST_ID)


def reply(
    body: bytes | str | Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> UpstreamResponse:
    """A response; ``body`` given as bytes/str is sent as is, anything else as JSON."""
    if isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body, ensure_ascii=False).encode()
    return UpstreamResponse(status_code=status, headers=dict(headers or {}), body=raw)


def observe(
    adapter: Adapter, request: UpstreamRequest, response: UpstreamResponse
) -> list[Observation]:
    """``adapter.parse`` plus the contract every call must keep.

    One observation per requested id in order, encodable, and no credential in it.
    """
    observations = adapter.parse(request, response)
    assert [o.task_id for o in observations] == list(request.task_ids)
    encoded = msgspec.json.encode(observations)
    for secret in adapter.secret_values():
        assert secret.encode() not in encoded, f"a credential leaked into {encoded!r}"
    return observations


def observe_one(
    adapter: Adapter,
    body: bytes | str | Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    task_id: str | None = None,
) -> Observation:
    request = build(adapter, [task_id or CASES[adapter.kind][1][0]])
    (observation,) = observe(adapter, request, reply(body, status, headers))
    return observation


def fault_of(observation: Observation) -> Fault:
    assert observation.fault is not None, f"expected a fault, got {observation}"
    return observation.fault


def malformed_message(observation: Observation) -> str:
    fault = fault_of(observation)
    assert fault.kind is FaultKind.MALFORMED
    return fault.message
