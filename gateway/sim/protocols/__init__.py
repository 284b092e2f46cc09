"""The five upstream protocols: verify a status request, render tasks natively.

Each :class:`Protocol` turns one :class:`Call` (what arrived over HTTP) into
one :class:`Reply` (what to send back), reading tasks from a
:class:`~gateway.sim.simulator.Simulator`. The ``render_*`` functions are
pure: a :class:`~gateway.sim.timeline.TaskMoment` in, the provider's JSON
object out. Envelopes, error codes and field names follow the upstream docs
in ``docs/providers/``; each module (one per upstream, as in
``gateway/providers/``) cites its doc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.sim.protocols.aholo import AholoProtocol
from gateway.sim.protocols.ailab import AilabProtocol
from gateway.sim.protocols.base import Call, Protocol, Reply
from gateway.sim.protocols.genpic import GenpicProtocol
from gateway.sim.protocols.tryon import TryonProtocol
from gateway.sim.protocols.videoproc import VideoprocProtocol

__all__ = ["PROTOCOLS", "Call", "Protocol", "Reply"]

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
