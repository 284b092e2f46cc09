"""The declarative adapter (``kind = "http"``): requests, replies, credentials, config errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.cli import main
from gateway.config import parse_config
from gateway.core.model import ErrorInfo, FaultKind, Observation, Result, State
from gateway.exceptions import ConfigError, InvalidTaskKey
from gateway.providers.declarative import DeclarativeAdapter
from tests.unit.providers.support import NOW_MS, REQUEST_ID, fault_of, malformed_message, reply

KEY = "key-7Hq2Zx91"
BATCH_KEY, BATCH_UID = "appkey-Qw81Lm", "uid-5521"


def provider(**table: Any) -> dict[str, Any]:
    """A single-task provider table in the shape of the videoproc example, with overrides."""
    base: dict[str, Any] = {
        "kind": "http",
        "base_url": "https://api.example.com/v2/",
        "request": {"url": "{base}/status/{task_id}", "headers": {"x-api-key": KEY}},
        "reply": {"not_found": [404]},
        "map": {
            "state": {
                "path": "status",
                "values": {"waiting": "queued", "busy": "running", "done": "succeeded"}
                | {"broken": "failed", "refused": "rejected"},
            },
            "progress": "progress",
            "position": ["queue.position", "position"],
            "message": "message",
            "result": {"files": "files", "meta": {"info": "info"}},
            "error": {"code": "error.code", "message": ["error.text", "message"]},
        },
    }
    return _merge(base, table)


def batch_provider(**table: Any) -> dict[str, Any]:
    """aholo's by-ids call without its md5 sign: a JSON array body, an envelope, a task list."""
    base: dict[str, Any] = {
        "kind": "http",
        "base_url": "https://openapi.example.com",
        "request": {
            "method": "POST",
            "url": "{base}/v2/project/task/list/by-ids",
            "query": {"appkey": BATCH_KEY, "appuid": BATCH_UID, "timestamp": "{now_ms}"},
            "batch": {"mode": "json", "size": 50},
        },
        "reply": {"tasks": "d", "id": "taskId"},
        "map": {
            "state": {
                "path": "status",
                "values": {"0": "queued", "1": "queued", "2": "running", "3": "succeeded"}
                | {"4": "failed", "5": "cancelled", "6": "expired", "7": "rejected"},
            },
            "result": {"files": {"ply": "result.plyPath", "spz": "result.spzPath"}},
        },
        "api_error": {"when": 'c != "0"', "code": "c", "message": "m", "auth": 'c in ["401"]'},
    }
    return _merge(base, table)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def replaced(table: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``table`` with the value at ``dotted`` replaced (merging cannot empty a table)."""
    out = copy.deepcopy(table)
    *parents, last = dotted.split(".")
    inner = out
    for key in parents:
        inner = inner[key]
    inner[last] = value
    return out


def adapter_of(table: dict[str, Any], name: str = "vp2") -> DeclarativeAdapter:
    config = parse_config({"providers": {name: table}}, env={})
    adapter = config.runtimes()[name].adapter
    assert isinstance(adapter, DeclarativeAdapter)
    return adapter


def observe(
    adapter: DeclarativeAdapter, task_ids: list[str], body: Any, status: int = 200, **headers: str
) -> list[Observation]:
    request = adapter.build_request(task_ids, now_ms=NOW_MS, request_id=REQUEST_ID)
    observations = adapter.parse(request, reply(body, status, headers))
    assert [o.task_id for o in observations] == task_ids
    encoded = msgspec.json.encode(observations)
    for secret in adapter.secret_values():
        assert secret.encode() not in encoded
    return observations


# --- requests -------------------------------------------------------------------------


def test_single_request_fills_the_templates_and_encodes_the_id_in_the_path() -> None:
    adapter = adapter_of(provider())
    request = adapter.build_request(["a/b c"], now_ms=NOW_MS, request_id=REQUEST_ID)
    assert request.method == "GET"
    assert request.url == "https://api.example.com/v2/status/a%2Fb%20c"
    assert request.headers == (("x-api-key", KEY),)
    assert request.params == ()
    assert request.body is None
    assert request.task_ids == ("a/b c",)


def test_a_single_task_provider_refuses_two_ids() -> None:
    adapter = adapter_of(provider())
    with pytest.raises(ValueError, match="exactly one task"):
        adapter.build_request(["a", "b"], now_ms=NOW_MS, request_id=REQUEST_ID)


def test_json_body_templates_query_placeholders_and_literal_braces() -> None:
    table = provider(
        request={
            "method": "POST",
            "url": "{base}/query",
            "query": {"t": "{now_ms}", "raw": "{{literal}}"},
            "json": {"task_id": "{task_id}", "trace": "req-{request_id}", "n": 1, "l": [True]},
        }
    )
    request = adapter_of(table).build_request(["7f3c"], now_ms=NOW_MS, request_id=REQUEST_ID)
    assert request.url == "https://api.example.com/v2/query"
    assert request.params == (("t", str(NOW_MS)), ("raw", "{literal}"))
    assert json.loads(request.body or b"") == {
        "task_id": "7f3c",
        "trace": f"req-{REQUEST_ID}",
        "n": 1,
        "l": [True],
    }
    assert ("Content-Type", "application/json") in request.headers


def test_batch_json_mode_sends_the_ids_as_the_body() -> None:
    adapter = adapter_of(batch_provider(), "ah2")
    assert adapter.batch_size == 50
    request = adapter.build_request(["A", "B"], now_ms=NOW_MS, request_id=REQUEST_ID)
    assert request.method == "POST"
    assert json.loads(request.body or b"") == ["A", "B"]
    assert dict(request.params) == {
        "appkey": BATCH_KEY,
        "appuid": BATCH_UID,
        "timestamp": str(NOW_MS),
    }


def test_batch_json_mode_can_place_the_ids_inside_a_template() -> None:
    table = batch_provider(
        request={"json": {"Action": "List", "TaskUIDs": "{task_ids}", "id": "{request_id}"}}
    )
    request = adapter_of(table, "gp2").build_request(
        ["u1", "u2"], now_ms=NOW_MS, request_id=REQUEST_ID
    )
    assert json.loads(request.body or b"") == {
        "Action": "List",
        "TaskUIDs": ["u1", "u2"],
        "id": REQUEST_ID,
    }


def test_batch_query_mode_repeats_one_parameter_per_id() -> None:
    table = batch_provider(
        request={"method": "GET", "batch": {"mode": "query", "param": "ids", "size": 3}}
    )
    config = parse_config({"providers": {"q": table}}, env={})
    runtime = config.runtimes()["q"]
    assert runtime.batch_size == 3
    request = runtime.adapter.build_request(["a", "b"], now_ms=NOW_MS, request_id=REQUEST_ID)
    assert request.body is None
    assert request.params[-2:] == (("ids", "a"), ("ids", "b"))


def test_policy_keys_in_the_table_override_the_fallbacks() -> None:
    table = batch_provider(interval_s=7, batch_size=10, cost_per_call=0.5, budget_per_hour=3)
    runtime = parse_config({"providers": {"b": table}}, env={}).runtimes()["b"]
    assert (runtime.policy.base_s, runtime.batch_size, runtime.cost_per_call) == (7, 10, 0.5)
    fallback = parse_config({"providers": {"p": provider()}}, env={}).runtimes()["p"]
    assert (fallback.policy.base_s, fallback.policy.max_s, fallback.batch_size) == (5, 30, 1)
    assert fallback.describe()["kind"] == "http"


def test_path_segment_ids_cannot_be_dot_segments() -> None:
    adapter = adapter_of(provider())
    with pytest.raises(InvalidTaskKey, match=r"'\.' or '\.\.'"):
        adapter.check_task_id("..")
    adapter_of(provider(request={"url": "{base}/q", "query": {"id": "{task_id}"}})).check_task_id(
        ".."
    )


# --- credentials -------------------------------------------------------------------


def test_credentials_are_the_literal_values_not_the_templates_or_plain_headers() -> None:
    table = provider(
        request={
            "headers": {
                "Authorization": "Bearer tok-3f9a8b7c6d",
                "Content-Type": "application/json",
                "X-Task": "{task_id}",
            },
            "query": {"sig": "s3cr3t-{now_ms}"},
        }
    )
    secrets = set(adapter_of(table).secret_values())
    assert {KEY, "Bearer tok-3f9a8b7c6d", "tok-3f9a8b7c6d", "s3cr3t-"} <= secrets
    assert "application/json" not in secrets
    assert not any("{" in s for s in secrets)


def test_an_echoed_credential_is_scrubbed_from_messages() -> None:
    adapter = adapter_of(provider())
    body = {"status": "broken", "error": {"text": f"key {KEY} has no quota"}}
    [observation] = observe(adapter, ["t1"], body)
    assert observation.error == ErrorInfo("upstream_failed", "key [redacted] has no quota")


# --- replies ------------------------------------------------------------------------


def test_a_running_reply_maps_state_progress_position_and_message() -> None:
    [obs] = observe(
        adapter_of(provider()),
        ["t1"],
        {"status": "busy", "progress": 41.6, "queue": {"position": None}, "position": 3}
        | {"message": "encoding"},
    )
    assert obs == Observation(
        "t1",
        State.RUNNING,
        progress=42,
        position=3,
        message="encoding",
        upstream={"status": "busy"},
    )


def test_progress_is_clamped_to_0_100() -> None:
    adapter = adapter_of(provider())
    assert observe(adapter, ["t"], {"status": "busy", "progress": 250})[0].progress == 100
    assert observe(adapter, ["t"], {"status": "busy", "progress": -3})[0].progress == 0


def test_a_finished_reply_resolves_relative_files_against_the_base_url() -> None:
    body = {
        "status": "done",
        "files": {"video": "/dl/v.mp4", "thumb": "t.png", "cdn": "https://cdn.example/a.mp3"},
        "info": {"duration": 300},
    }
    [obs] = observe(adapter_of(provider()), ["t1"], body)
    files = {
        "video": "https://api.example.com/v2/dl/v.mp4",
        "thumb": "https://api.example.com/v2/t.png",
        "cdn": "https://cdn.example/a.mp3",
    }
    assert obs.result == Result(
        urls=tuple(files.values()), files=files, meta={"info": {"duration": 300}}
    )
    assert obs.error is None


def test_result_urls_from_a_list_and_a_separate_base() -> None:
    table = provider(
        map={"result": {"urls": "out[*].url", "base_url": "https://files.example.com/x/"}}
    )
    body = {"status": "done", "out": [{"url": "1.jpg"}, {"url": "/2.jpg"}, {"url": None}]}
    [obs] = observe(adapter_of(table), ["t1"], body)
    assert obs.result is not None
    assert obs.result.urls == (
        "https://files.example.com/x/1.jpg",
        "https://files.example.com/x/2.jpg",
    )


def test_failure_reads_the_first_present_error_message() -> None:
    adapter = adapter_of(provider())
    body = {"status": "broken", "error": {"code": 13, "text": ""}, "message": "disk full"}
    [obs] = observe(adapter, ["t1"], body)
    assert obs.error == ErrorInfo("13", "disk full")
    [bare] = observe(adapter, ["t1"], {"status": "broken"})
    assert bare.error == ErrorInfo("upstream_failed", "task failed")
    [rejected] = observe(adapter, ["t1"], {"status": "refused"})
    assert rejected.state is State.REJECTED and rejected.error is None


def test_an_unlisted_status_is_kept_raw_and_the_task_stays_unknown() -> None:
    [obs] = observe(adapter_of(provider()), ["t1"], {"status": "paused"})
    assert obs.state is State.UNKNOWN
    assert obs.message == "unrecognized upstream status 'paused'"
    assert obs.upstream == {"status": "paused"}


def test_a_not_found_status_means_unknown_with_an_error() -> None:
    [obs] = observe(adapter_of(provider()), ["t1"], {"detail": "nope"}, 404)
    assert obs.state is State.UNKNOWN
    assert obs.error is not None and obs.error.code == "not_found"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("<html>busy</html>", "HTML"),
        ("", "empty"),
        ({"progress": 3}, "field 'status' is missing"),
        ({"status": {"a": 1}}, "field 'status' is an object, expected a status value"),
        ({"status": "busy", "progress": "40%"}, "field 'progress' is a str, expected a number"),
        ({"status": "busy", "message": ["x"]}, "field 'message' is a list, expected text"),
        ({"status": "done", "files": ["x"]}, "field 'files' is a list, expected an object"),
    ],
)
def test_malformed_replies_name_the_field_never_the_body(body: Any, fragment: str) -> None:
    [obs] = observe(adapter_of(provider()), ["t1"], body)
    message = malformed_message(obs)
    assert fragment in message
    assert message.startswith("vp2 reply")


def test_http_errors_without_an_envelope_become_faults() -> None:
    adapter = adapter_of(provider())
    fault = fault_of(observe(adapter, ["t"], "oops", 503, **{"retry-after": "4"})[0])
    assert (fault.kind, fault.retry_after_s, fault.message) == (
        FaultKind.SERVER,
        4.0,
        "vp2 answered HTTP 503",
    )
    assert fault_of(observe(adapter, ["t"], "no", 401)[0]).kind is FaultKind.AUTH
    assert fault_of(observe(adapter, ["t"], {"status": "busy"}, 429)[0]).kind is (
        FaultKind.RATE_LIMITED
    )


# --- batches and API errors -------------------------------------------------------------

AHOLO_REPLY = {
    "c": "0",
    "m": "",
    "d": [
        {"taskId": "A", "status": 3, "result": {"plyPath": "https://cdn/a.ply", "spzPath": None}},
        {"taskId": "B", "status": 8},
        {"taskId": "Z", "status": 4},
    ],
}


def test_batch_reply_is_matched_by_id_and_a_missing_id_is_not_visible_yet() -> None:
    table = batch_provider(map={"state": {"values": {"8": "running"}}})
    a, b, c = observe(adapter_of(table, "ah2"), ["A", "B", "C"], AHOLO_REPLY)
    assert a.state is State.SUCCEEDED
    assert a.result == Result(urls=("https://cdn/a.ply",), files={"ply": "https://cdn/a.ply"})
    assert b.state is State.RUNNING
    assert (c.state, c.message) == (State.UNKNOWN, "not visible upstream yet")


def test_batch_reply_with_no_list_yet_reads_every_id_as_not_visible() -> None:
    observations = observe(adapter_of(batch_provider(), "ah2"), ["A", "B"], {"c": "0", "d": None})
    assert [o.message for o in observations] == ["not visible upstream yet"] * 2


def test_api_errors_become_auth_or_server_faults_with_the_upstream_text() -> None:
    adapter = adapter_of(batch_provider(), "ah2")
    auth = fault_of(observe(adapter, ["A"], {"c": "401", "m": f"bad appkey {BATCH_KEY}"})[0])
    assert auth.kind is FaultKind.AUTH and auth.retryable is False
    assert auth.message == "ah2 API error (401: bad appkey [redacted])"
    server = fault_of(observe(adapter, ["A"], {"c": "100500", "m": "busy"})[0])
    assert (server.kind, server.message) == (FaultKind.SERVER, "ah2 API error (100500: busy)")


def test_an_api_error_about_the_task_ends_it() -> None:
    table = provider(
        api_error={
            "when": "error_code != 0",
            "code": ["detail.code", "error_code"],
            "message": "detail.message",
            "rate_limited": "error_code == 429",
            "task": "error_code < 500",
            "task_state": "expired",
            "upstream": {"error_code": "error_code"},
        }
    )
    adapter = adapter_of(table)
    body = {"error_code": 400, "detail": {"code": "GONE", "message": "result expired"}}
    [obs] = observe(adapter, ["t1"], body, 400)
    assert obs == Observation(
        "t1", State.EXPIRED, error=ErrorInfo("GONE", "result expired"), upstream={"error_code": 400}
    )
    limited = fault_of(
        observe(adapter, ["t1"], {"error_code": 429}, 200, **{"retry-after": "9"})[0]
    )
    assert (limited.kind, limited.retry_after_s) == (FaultKind.RATE_LIMITED, 9.0)
    # An error on a 5xx is the upstream's trouble, not the task's.
    assert fault_of(observe(adapter, ["t1"], body, 502)[0]).kind is FaultKind.SERVER


# --- configuration errors name the exact key ----------------------------------------------


@pytest.mark.parametrize(
    ("table", "path", "fragment"),
    [
        (provider(map={"state": {"path": "status["}}), "map.state.path", "bad path 'status['"),
        (provider(map={"state": {"path": "d[*].s"}}), "map.state.path", "[*] is not allowed"),
        (
            provider(map={"state": {"values": {"done": "finished"}}}),
            "map.state.values.done",
            "'finished' is not a state",
        ),
        (replaced(provider(), "map.state.values", {}), "map.state.values", "at least one"),
        (
            provider(map={"error": {"message": ["ok", "bad..path"]}}),
            "map.error.message[1]",
            "bad path",
        ),
        (provider(map={"result": {"meta": {"x": "a b"}}}), "map.result.meta.x", "bad path"),
        (provider(map={"progres": "p"}), "map.progres", "unknown key"),
        (provider(request={"url": "{base}/{id}"}), "request.url", "unknown placeholder {id}"),
        (provider(request={"url": "{base}/{task_id"}), "request.url", "lone '{'"),
        (provider(request={"url": "/s/{task_id}"}), "request.url", "must start with {base}"),
        (
            provider(request={"headers": {"x-k": "{task_ids}"}}),
            "request.headers.x-k",
            "{task_ids} may only be",
        ),
        (
            provider(request={"json": {"a": 1}}),
            "request.method",
            "a GET request carries no body",
        ),
        (
            provider(request={"method": "POST", "json": {"a": 1}, "body": "x"}),
            "request.body",
            "not both",
        ),
        (provider(request={"method": "DELETE"}), "request.method", "Invalid enum value"),
        (
            provider(api_error={"when": "error_code = 1"}),
            "api_error.when",
            "bad condition 'error_code = 1'",
        ),
        (
            provider(api_error={"when": "a != 0", "task_state": "over"}),
            "api_error.task_state",
            "'over' is not a state",
        ),
        (batch_provider(reply={"id": None}), "reply.id", "which field holds each one's id"),
        (
            batch_provider(request={"url": "{base}/{task_id}"}),
            "request.url",
            "{task_id} names one task",
        ),
        (
            batch_provider(request={"batch": {"mode": "query"}}),
            "request.batch.param",
            "name it",
        ),
        (
            batch_provider(request={"json": {"ids": "x"}}),
            "request.json",
            '"{task_ids}" as one value',
        ),
        (batch_provider(request={"batch": {"size": 0}}), "request.batch.size", ">= 1"),
        (provider(base_url="ftp://x"), "base_url", "regex"),
    ],
)
def test_a_broken_mapping_names_the_exact_key(
    table: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"vp2": table}}, env={})
    assert info.value.path == f"providers.vp2.{path}", str(info.value)
    assert fragment in str(info.value)


def test_check_config_reports_the_broken_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pollcast.toml"
    config.write_text(
        '[providers.vp2]\nkind = "http"\nbase_url = "https://x.example"\n'
        '[providers.vp2.request]\nurl = "{base}/s/{task_id}"\n'
        '[providers.vp2.map.state]\npath = "status.[0]"\nvalues = { done = "succeeded" }\n'
    )
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "providers.vp2.map.state.path: bad path 'status.[0]'" in err
    assert "position 7" in err


# --- state rules, per-value messages and errors, not-found conditions -------------------------


def ruled_provider() -> dict[str, Any]:
    return provider(
        map={
            "state": {
                "values": {"1": "running", "2": "succeeded", "-2": "failed"},
                "path": "code",
                "rules": [
                    {"when": "code == 1 and slot > 0", "state": "queued"},
                    {"when": "code == 1 and slot == 0 and hold == true", "state": "rejected"},
                ],
                "messages": {"1": "in line", "-2": "broke"},
                "errors": {"-2": {"code": "insufficient_balance", "message": "not enough coins"}},
            },
            "position": "slot",
            "position_in": ["queued"],
            "message": "text",
        },
        api_error={"when": "status_code != null", "not_found": "status_code == 404"},
    )


@pytest.mark.parametrize(
    ("body", "state", "position", "message", "error"),
    [
        ({"code": 1, "slot": 3}, State.QUEUED, 3, "in line", None),
        ({"code": 1, "slot": 0}, State.RUNNING, None, "in line", None),
        ({"code": 1, "slot": 0, "hold": True}, State.REJECTED, None, "in line", None),
        ({"code": 1, "slot": 2, "text": "said so"}, State.QUEUED, 2, "said so", None),
        (
            {"code": -2, "slot": 0},
            State.FAILED,
            None,
            "broke",
            ErrorInfo("insufficient_balance", "not enough coins"),
        ),
    ],
)
def test_rules_come_before_values_and_literals_fill_in(
    body: dict[str, Any],
    state: State,
    position: int | None,
    message: str | None,
    error: ErrorInfo | None,
) -> None:
    [obs] = observe(adapter_of(ruled_provider()), ["t1"], body)
    assert (obs.state, obs.position, obs.message, obs.error) == (state, position, message, error)


def test_an_api_error_condition_can_mean_not_found() -> None:
    adapter = adapter_of(ruled_provider())
    [obs] = observe(adapter, ["t1"], {"status_code": 404, "msg": "task not found"})
    assert obs.state is State.UNKNOWN and obs.fault is None
    assert obs.error == ErrorInfo("not_found", "upstream does not know this task id")
    [other] = observe(adapter, ["t1"], {"status_code": 500})
    assert other.fault is not None and other.fault.kind is FaultKind.SERVER
