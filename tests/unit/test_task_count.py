"""How many tasks one stream, token or WebSocket connection may name: one rule, three scopes."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.exceptions import TooManyTasks
from gateway.service import Gateway, TaskScope


def gateway(**server: int) -> Gateway:
    doc = {"server": server, "providers": {"vp": {"kind": "videoproc", "base_url": "http://x"}}}
    return Gateway(parse_config(doc, {}))


@pytest.mark.parametrize("scope", ["stream", "token"])
def test_a_stream_or_token_may_name_up_to_max_tasks_per_stream(scope: TaskScope) -> None:
    gw = gateway(max_tasks_per_stream=3, max_tasks_per_ws=10)
    gw.check_task_count(3, scope)
    with pytest.raises(TooManyTasks) as info:
        gw.check_task_count(4, scope)
    assert info.value.message == f"4 tasks in one {scope}; the limit is 3"


def test_a_connection_may_follow_up_to_max_tasks_per_ws() -> None:
    gw = gateway(max_tasks_per_stream=10, max_tasks_per_ws=2)
    gw.check_task_count(2, "connection")
    with pytest.raises(TooManyTasks) as info:
        gw.check_task_count(3, "connection")
    assert info.value.message == "this connection already follows 2 tasks; unsubscribe first"
    assert info.value.code == "too_many_tasks"
