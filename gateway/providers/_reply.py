"""The one shape the five JSON adapters share: decode a reply, map it to observations.

A concrete adapter subclasses :class:`ReplyAdapter` and implements
:meth:`ReplyAdapter.read`, which returns either a :class:`Fault` (the poll
taught nothing about any task) or the observations of the task ids the reply
talks about. :meth:`ReplyAdapter.parse` turns that into the
:class:`~gateway.providers.base.Adapter` contract: one observation per
requested id, in order, ids the reply left out marked "not visible upstream
yet", credentials redacted from every string field (:mod:`gateway.redaction`),
and never an exception.

Replies are decoded with ``msgspec`` into small per-adapter ``Struct`` types
(unknown fields ignored), so a wrong shape is reported by field path and type
only (``field 'd' is a str, expected a list or null``); the body's text is
never copied into a message. The only upstream text that reaches a message is
what the upstream put in its own error-message fields.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, TypeVar

import msgspec

from gateway.core.model import ErrorInfo, Fault, FaultKind, Observation, State
from gateway.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    fault_for_status,
    fault_observations,
    parse_retry_after,
)
from gateway.redaction import Redactor

__all__ = [
    "NOT_FOUND",
    "BaseUrl",
    "Credential",
    "MalformedReply",
    "ReplyAdapter",
    "api_error_fault",
    "decode_reply",
    "observe_listed",
    "only_task_id",
    "resolve_url",
    "unrecognized_status",
]

T = TypeVar("T")
Item = TypeVar("Item")

BaseUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")]
"""An ``http(s)://host[...]`` URL; every request URL is built from it."""

Credential = Annotated[str, msgspec.Meta(min_length=1)]
"""A credential value; empty means an unset environment variable slipped through."""

NOT_FOUND = ErrorInfo("not_found", "upstream does not know this task id")
_NOT_VISIBLE = "not visible upstream yet"
_SHOWN_STATUS_LEN = 64
_json_encode = msgspec.json.Encoder().encode


class MalformedReply(Exception):
    """The reply does not have the documented shape; the message says where and how."""


def decode_reply(body: bytes, reply_type: type[T]) -> T:
    """Decode a JSON reply into ``reply_type``.

    Raises:
        MalformedReply: naming the field path and the wrong type, never quoting the body.
    """
    if not body.strip():
        raise MalformedReply("body is empty")
    if body.lstrip()[:1] == b"<":
        raise MalformedReply("body is an HTML/XML page, not JSON")
    try:
        return msgspec.json.decode(body, type=reply_type)
    except msgspec.ValidationError as exc:
        raise MalformedReply(_rephrase(str(exc))) from None
    except msgspec.DecodeError as exc:
        # msgspec's syntax errors name a byte offset, never the content.
        raise MalformedReply(f"body is not valid JSON ({exc})") from None


_EXPECTED_RE = re.compile(
    r"^Expected `(?P<want>[^`]+)`, got `(?P<got>\w+)`(?: - at `\$(?P<at>.*)`)?$"
)
_MISSING_RE = re.compile(
    r"^Object missing required field `(?P<name>[^`]+)`(?: - at `\$(?P<at>.*)`)?$"
)
_AT_RE = re.compile(r"^(?P<what>.+) - at `\$(?P<at>.+)`$")
_TYPE_NAMES = {
    "array": "a list",
    "object": "an object",
    "str": "a str",
    "int": "an int",
    "float": "a float",
    "bool": "a bool",
    "null": "null",
}


def _rephrase(error: str) -> str:
    """Say msgspec's "Expected `array`, got `str` - at `$.d`" as "field 'd' is a str, …"."""
    if match := _EXPECTED_RE.match(error):
        want = " or ".join(_TYPE_NAMES.get(name, name) for name in match["want"].split(" | "))
        got = _TYPE_NAMES.get(match["got"], match["got"])
        at = (match["at"] or "").removeprefix(".")
        subject = f"field {at!r}" if at else "body"
        return f"{subject} is {got}, expected {want}"
    if match := _MISSING_RE.match(error):
        at = (match["at"] or "").removeprefix(".")
        return f"field {(at + '.' if at else '') + match['name']!r} is missing"
    if match := _AT_RE.match(error):
        what = match["what"]
        return f"field {match['at'].removeprefix('.')!r}: {what[:1].lower()}{what[1:]}"
    return error


def api_error_fault(
    response: UpstreamResponse, message: str, *, auth: bool, rate_limited: bool = False
) -> Fault:
    """The fault for an API-level error reported inside a reply envelope.

    ``auth=True`` (the envelope's code means "credentials/signature refused")
    or an HTTP 401/403 status is a non-retryable ``auth`` fault;
    ``rate_limited=True`` or an HTTP 429 is ``rate_limited``; anything else is
    a ``server`` fault that may pass. ``Retry-After`` is carried either way.
    """
    if auth or response.status_code in (401, 403):
        return Fault(FaultKind.AUTH, message, retryable=False)
    retry_after_s = parse_retry_after(response.headers)
    if rate_limited or response.status_code == 429:
        return Fault(FaultKind.RATE_LIMITED, message, retry_after_s=retry_after_s)
    return Fault(FaultKind.SERVER, message, retry_after_s=retry_after_s)


def unrecognized_status(task_id: str, value: object, upstream: dict[str, Any]) -> Observation:
    """A status value the upstream's doc does not list: keep it raw, guess nothing."""
    shown = repr(value)
    if len(shown) > _SHOWN_STATUS_LEN:
        shown = shown[:_SHOWN_STATUS_LEN] + "…"
    return Observation(
        task_id=task_id,
        state=State.UNKNOWN,
        message=f"unrecognized upstream status {shown}",
        upstream=upstream,
    )


def observe_listed(
    task_ids: Sequence[str],
    items: Iterable[Item],
    task_id_of: Callable[[Item], str],
    observe: Callable[[Item], Observation],
) -> dict[str, Observation]:
    """Observations of the requested ids a batch reply lists.

    Items about ids nobody asked for are ignored; the first item about an id wins.
    """
    wanted = set(task_ids)
    observations: dict[str, Observation] = {}
    for item in items:
        task_id = task_id_of(item)
        if task_id in wanted and task_id not in observations:
            observations[task_id] = observe(item)
    return observations


def only_task_id(task_ids: Sequence[str], kind: str) -> str:
    """The one id of a single-task upstream's request.

    Raises:
        ValueError: not exactly one id (the poller sends ``batch_size`` = 1 ids).
    """
    if len(task_ids) != 1:
        raise ValueError(f"{kind} queries exactly one task per request, got {len(task_ids)}")
    return task_ids[0]


def resolve_url(root: str, path: str) -> str:
    """An absolute URL for a result path: absolute URLs stay, paths hang off ``root``."""
    if path.startswith(("http://", "https://")):
        return path
    return root + path if path.startswith("/") else f"{root}/{path}"


class ReplyAdapter(Adapter):
    """An adapter whose upstream answers JSON; implements :meth:`parse` once for all."""

    @property
    def root(self) -> str:
        """``settings.base_url`` without a trailing slash: every URL starts here."""
        base_url: str = self.settings.base_url
        return base_url.rstrip("/")

    @abstractmethod
    def read(
        self, request: UpstreamRequest, response: UpstreamResponse
    ) -> Fault | Mapping[str, Observation]:
        """Interpret one reply.

        Returns:
            A :class:`Fault` that applies to every requested id, or the
            observations by task id of the ids the reply talks about.

        Raises:
            MalformedReply: the reply lacks the documented shape.
        """

    def decode_or_fault(self, response: UpstreamResponse, reply_type: type[T]) -> T | Fault:
        """The decoded envelope, or the HTTP-status fault when a non-2xx reply has none.

        Raises:
            MalformedReply: a 2xx reply that is not the documented envelope.
        """
        try:
            # Redacted as decoded: whatever an adapter derives from the reply
            # (a shortened status, a joined message) never holds a credential.
            decoded = decode_reply(response.body, reply_type)
            return decoded if self.redactor.clean(response.body) else self.redactor.value(decoded)
        except MalformedReply:
            status_fault = fault_for_status(response, self.name)
            if status_fault is None:
                raise
            return status_fault

    def parse(self, request: UpstreamRequest, response: UpstreamResponse) -> list[Observation]:
        task_ids = request.task_ids
        outcome: Fault | Mapping[str, Observation]
        try:
            outcome = self.read(request, response)
        except MalformedReply as exc:
            outcome = Fault(FaultKind.MALFORMED, f"{self.name} reply: {exc}")
        except Exception as exc:
            # The contract (Adapter.parse) is "never raises": a reply shape no
            # check above anticipated must not take the poller down with it.
            outcome = Fault(
                FaultKind.MALFORMED,
                f"{self.name} reply could not be interpreted ({type(exc).__name__})",
            )
        if isinstance(outcome, Fault):
            return fault_observations(task_ids, self._scrub_fault(outcome))
        return [
            self._scrub(outcome.get(task_id) or Observation(task_id=task_id, message=_NOT_VISIBLE))
            for task_id in task_ids
        ]

    # Upstreams may echo a key or account id anywhere: in their error text, in
    # a status value, in fields nobody documented. Every string an observation
    # carries (message, error, result, upstream, fault) is redacted in every
    # form the credential may take; the task id is the caller's own, kept as is.

    @cached_property
    def redactor(self) -> Redactor:
        """Redacts this adapter's credentials (:meth:`secret_values`) in all their forms."""
        return Redactor(groups=[self.secret_values()])

    def _scrub_fault(self, fault: Fault) -> Fault:
        return self.redactor.value(fault)

    def _scrub(self, observation: Observation) -> Observation:
        # One scan of the observation's JSON first: walking every field of
        # every observation costs ~10x more, and almost always finds nothing.
        if self.redactor.clean(_json_encode(observation)):
            return observation
        task_id = observation.task_id
        scrubbed = self.redactor.value(observation)
        if scrubbed.task_id != task_id:
            scrubbed = msgspec.structs.replace(scrubbed, task_id=task_id)
        return scrubbed
