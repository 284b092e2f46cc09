"""What every simulated upstream shares: the request in, the reply out, the protocol interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from gateway.sim.simulator import Simulator

__all__ = ["Call", "Protocol", "Reply", "encode_json", "json_object", "string_list"]

encode_json = msgspec.json.Encoder().encode


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


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def string_list(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
