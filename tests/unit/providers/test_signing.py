"""Declarative request signing (``request.sign``) against the built-in adapters' signatures.

The examples in ``deploy/examples`` (aholo's md5 over a concatenation, genpic's
sha1 over sorted, flattened fields) must sign exactly as the built-in adapters
do for the same fixed inputs; the primitives match published test vectors; a
wrong ``sign`` table is a config error naming its key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.config import load_config, parse_config
from gateway.exceptions import ConfigError, InvalidTaskKey
from gateway.providers.aholo import aholo_sign
from gateway.providers.base import Adapter, UpstreamRequest
from gateway.providers.declarative import DeclarativeAdapter
from gateway.providers.genpic import genpic_signature
from gateway.providers.signing import flatten_pairs, sign, sorted_pairs_text
from tests.unit.providers import support
from tests.unit.providers.support import (
    AHOLO_KEY,
    AHOLO_SECRET,
    AHOLO_UID,
    GENPIC_PRIVATE,
    GENPIC_PUBLIC,
    NOW_MS,
    OSS_BASE,
    REQUEST_ID,
    TRYON_KEY,
    TRYON_OPEN_ID,
)
from tests.unit.providers.test_declarative import provider

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
ENV = {
    "AHOLO_BASE_URL": "https://openapi.kujiale.com",
    "AHOLO_APP_KEY": AHOLO_KEY,
    "AHOLO_APP_SECRET": AHOLO_SECRET,
    "AHOLO_APPUID": AHOLO_UID,
    "GENPIC_BASE_URL": "https://genpic.example.com/api/",
    "GENPIC_PUBLIC_KEY": GENPIC_PUBLIC,
    "GENPIC_PRIVATE_KEY": GENPIC_PRIVATE,
    "TRYON_BASE_URL": "https://tryon.example.com",
    "TRYON_OPEN_ID": TRYON_OPEN_ID,
    "TRYON_API_KEY": TRYON_KEY,
    "TRYON_OSS_BASE": OSS_BASE,
}


def example(kind: str) -> DeclarativeAdapter:
    adapter = load_config(EXAMPLES / f"{kind}.toml", env=ENV).runtimes()[kind].adapter
    assert isinstance(adapter, DeclarativeAdapter)
    return adapter


def request(adapter: Adapter, ids: list[str], now_ms: int = NOW_MS) -> UpstreamRequest:
    return adapter.build_request(ids, now_ms=now_ms, request_id=REQUEST_ID)


def same_request(ours: UpstreamRequest, theirs: UpstreamRequest) -> None:
    """Equal on the wire: method, URL, query, headers, and the body as JSON."""
    assert (ours.method, ours.url, ours.task_ids) == (theirs.method, theirs.url, theirs.task_ids)
    assert ours.params == theirs.params
    assert sorted(ours.headers) == sorted(theirs.headers)
    assert ours.body is not None and theirs.body is not None
    assert msgspec.json.decode(ours.body) == msgspec.json.decode(theirs.body)


# --- the primitives ---------------------------------------------------------------------


def test_digests_match_the_standard_library_and_rfc_4231() -> None:
    assert sign("md5", "abc", encoding="hex") == "900150983cd24fb0d6963f7d28e17f72"
    assert sign("sha1", "abc", encoding="hex") == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert sign("sha256", "abc", encoding="hex") == hashlib.sha256(b"abc").hexdigest()
    # RFC 4231 test case 2.
    assert sign("hmac-sha256", "what do ya want for nothing?", key="Jefe", encoding="hex") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert sign("sha256", "abc", encoding="base64") == (
        base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    )
    with pytest.raises(ValueError, match="needs a key"):
        sign("hmac-sha256", "x", encoding="hex")
    with pytest.raises(ValueError, match="takes no key"):
        sign("md5", "x", key="k", encoding="hex")


def test_flattening_lists_scalars_and_sorting() -> None:
    params = [("b", ["x", "y"]), ("a", 1), ("c", True), ("d", None), ("e", 2.5)]
    assert flatten_pairs(params) == [
        ("b.0", "x"),
        ("b.1", "y"),
        ("a", "1"),
        ("c", "true"),
        ("d", ""),
        ("e", "2.5"),
    ]
    assert sorted_pairs_text(params, prefix="<", suffix=">") == "<a1b.0xb.1yctruede2.5>"
    with pytest.raises(TypeError):
        flatten_pairs([("a", {"nested": 1})])


def test_sorted_pairs_are_genpic_signature_text() -> None:
    ids = [f"uid-{n}" for n in range(12)]  # TaskUIDs.10 sorts before TaskUIDs.2
    params = {"Action": "ListGenerateTaskDetail", "PublicKey": GENPIC_PUBLIC}
    params |= {"request_uuid": REQUEST_ID}
    text = sorted_pairs_text([*params.items(), ("TaskUIDs", ids)], prefix="", suffix="k")
    assert sign("sha1", text, encoding="hex") == genpic_signature({**params, "TaskUIDs": ids}, "k")


# --- the examples sign as the built-in adapters do ----------------------------------------


@pytest.mark.parametrize("count", [1, 3, 12])
def test_genpic_example_signs_like_the_builtin(count: int) -> None:
    ids = [f"task-{n}" for n in range(count)]
    ours, theirs = request(example("genpic"), ids), request(support.genpic(), ids)
    same_request(ours, theirs)
    assert ours.body is not None
    body = msgspec.json.decode(ours.body)
    expected = genpic_signature(
        {
            "Action": "ListGenerateTaskDetail",
            "PublicKey": GENPIC_PUBLIC,
            "request_uuid": REQUEST_ID,
            "TaskUIDs": ids,
        },
        GENPIC_PRIVATE,
    )
    assert body["Signature"] == expected


@pytest.mark.parametrize("now_ms", [NOW_MS, 1, 1_900_000_000_000])
def test_aholo_example_signs_like_the_builtin(now_ms: int) -> None:
    ids = ["t-1", "t-2"]
    ours, theirs = request(example("aholo"), ids, now_ms), request(support.aholo(), ids, now_ms)
    same_request(ours, theirs)
    assert dict(ours.params)["sign"] == aholo_sign(AHOLO_SECRET, AHOLO_KEY, AHOLO_UID, now_ms)
    assert dict(ours.params)["timestamp"] == str(now_ms)


def test_tryon_example_sends_the_builtin_body_with_an_integer_id() -> None:
    ours, theirs = request(example("tryon"), ["20250101"]), request(support.tryon(), ["20250101"])
    same_request(ours, theirs)
    assert ours.body is not None and b'"infId":20250101' in ours.body


@pytest.mark.parametrize("task_id", ["abc", "12a", str(2**63), "", "-1"])
def test_an_integer_id_template_refuses_what_is_no_long(task_id: str) -> None:
    adapter = example("tryon")
    with pytest.raises(InvalidTaskKey, match="integers"):
        adapter.check_task_id(task_id)
    with pytest.raises(InvalidTaskKey):
        request(adapter, [task_id])


def test_secrets_are_credentials_and_stay_out_of_messages() -> None:
    for kind in ("aholo", "genpic", "tryon"):
        values = example(kind).secret_values()
        assert {ENV[name] for name in ENV if name.endswith(("KEY", "SECRET", "UID", "ID"))} & set(
            values
        )
    assert {AHOLO_KEY, AHOLO_SECRET, AHOLO_UID} <= set(example("aholo").secret_values())
    assert {GENPIC_PUBLIC, GENPIC_PRIVATE} <= set(example("genpic").secret_values())


# --- other shapes: HMAC in a header, sorted query parameters -------------------------------


def signed(**sign_table: Any) -> DeclarativeAdapter:
    table = provider(
        secrets={"token": "hmac-key-Vb71"},
        request={
            "url": "{base}/status/{task_id}",
            "query": {"id": "{task_id}", "t": "{now_ms}"},
            "sign": sign_table,
        },
    )
    adapter = parse_config({"providers": {"vp2": table}}, env={}).runtimes()["vp2"].adapter
    assert isinstance(adapter, DeclarativeAdapter)
    return adapter


def test_hmac_sha256_over_a_template_into_a_header() -> None:
    adapter = signed(
        algorithm="hmac-sha256",
        key="{secrets.token}",
        text="GET\n{task_id}\n{now_ms}",
        encoding="base64",
        into={"header": "X-Signature"},
    )
    req = request(adapter, ["a/1"])
    mac = hmac.new(b"hmac-key-Vb71", f"GET\na/1\n{NOW_MS}".encode(), hashlib.sha256).digest()
    assert dict(req.headers)["X-Signature"] == base64.b64encode(mac).decode()
    assert "hmac-key-Vb71" in adapter.secret_values()


def test_sha256_over_sorted_query_parameters() -> None:
    adapter = signed(algorithm="sha256", sorted_params="query", prefix="p:", into={"query": "s"})
    req = request(adapter, ["a1"])
    text = f"p:ida1t{NOW_MS}"
    assert req.params == (
        ("id", "a1"),
        ("t", str(NOW_MS)),
        ("s", sign("sha256", text, encoding="hex")),
    )


def test_literal_keys_and_long_literal_text_in_a_signature_are_credentials() -> None:
    adapter = signed(
        algorithm="hmac-sha256",
        key="literal-hmac-key",
        sorted_params="query",
        prefix="v1:",
        suffix="&private-Zq81xW",
        into={"query": "s"},
    )
    secrets = set(adapter.secret_values())
    assert {"literal-hmac-key", "&private-Zq81xW", "hmac-key-Vb71"} <= secrets
    assert "v1:" not in secrets  # a short literal separator is not scrubbed everywhere


# --- a wrong sign table names its key -------------------------------------------------------


def _error(table: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config({"providers": {"vp2": table}}, env={})
    return caught.value


JSON_REQUEST = {
    "method": "POST",
    "url": "{base}/status",
    "json": {"id": "{task_id}", "Sig": "x"},
}


@pytest.mark.parametrize(
    ("request_table", "path", "fragment"),
    [
        ({"sign": {"algorithm": "md5", "text": "x", "into": {}}}, "request.sign.into", "once"),
        (
            {"sign": {"algorithm": "md5", "text": "x", "into": {"query": "a", "header": "b"}}},
            "request.sign.into",
            "once",
        ),
        ({"sign": {"algorithm": "md5", "into": {"query": "s"}}}, "request.sign", "give text"),
        (
            {
                "sign": {
                    "algorithm": "md5",
                    "text": "x",
                    "sorted_params": "query",
                    "into": {"query": "s"},
                }
            },
            "request.sign.text",
            "give text",
        ),
        (
            {"sign": {"algorithm": "hmac-sha256", "text": "x", "into": {"query": "s"}}},
            "request.sign.key",
            "needs a key",
        ),
        (
            {"sign": {"algorithm": "md5", "text": "x", "key": "k", "into": {"query": "s"}}},
            "request.sign.key",
            "plain digest",
        ),
        (
            {"sign": {"algorithm": "sha3", "text": "x", "into": {"query": "s"}}},
            "request.sign.algorithm",
            "Invalid enum value 'sha3'",
        ),
        (
            {"sign": {"algorithm": "md5", "text": "{secret}", "into": {"query": "s"}}},
            "request.sign.text",
            "unknown placeholder {secret}",
        ),
        (
            {"sign": {"algorithm": "md5", "text": "{secrets.nope}", "into": {"query": "s"}}},
            "request.sign.text",
            "names no entry of the provider's secrets table; it has {secrets.token}",
        ),
        (
            {"sign": {"algorithm": "md5", "text": "x", "prefix": "p", "into": {"query": "s"}}},
            "request.sign.prefix",
            "frame sorted_params",
        ),
        (
            {"sign": {"algorithm": "md5", "sorted_params": "json", "into": {"query": "s"}}},
            "request.sign",
            "needs request.json to be a table",
        ),
        (
            {**JSON_REQUEST, "sign": {"algorithm": "md5", "text": "x", "into": {"json": "Sig"}}},
            "request.json.Sig",
            "receives the signature",
        ),
        (
            {
                **JSON_REQUEST,
                "json": {"id": "{task_id}", "deep": {"a": "1"}},
                "sign": {"algorithm": "md5", "sorted_params": "json", "into": {"json": "S"}},
            },
            "request.json.deep",
            "scalars and lists of scalars",
        ),
        (
            {
                "query": {"s": "1"},
                "sign": {"algorithm": "md5", "text": "x", "into": {"query": "s"}},
            },
            "request.query.s",
            "receives the signature",
        ),
        ({"url": "{base}/{secrets.token}/{task_id}"}, "request.url", "not here"),
        ({"url": "{base}/{task_id:int}"}, "request.url", "whole json value"),
    ],
)
def test_a_wrong_sign_table_names_its_key(
    request_table: dict[str, Any], path: str, fragment: str
) -> None:
    table = provider(secrets={"token": "hmac-key-Vb71"}, request=request_table)
    error = _error(table)
    assert error.path == f"providers.vp2.{path}", str(error)
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("state_table", "path", "fragment"),
    [
        (
            {"rules": [{"when": "status ==", "state": "queued"}]},
            "map.state.rules[0].when",
            "bad condition",
        ),
        (
            {"rules": [{"when": "a == 1", "state": "done"}]},
            "map.state.rules[0].state",
            "not a state",
        ),
        (
            {"errors": {"x": {"code": "", "message": "m"}}},
            "map.state.errors.x.code",
            "must not be empty",
        ),
    ],
)
def test_a_wrong_state_rule_names_its_key(
    state_table: dict[str, Any], path: str, fragment: str
) -> None:
    error = _error(provider(map={"state": state_table}))
    assert error.path == f"providers.vp2.{path}", str(error)
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("secrets", "path", "fragment"),
    [
        ({"token": ""}, "secrets.token", "is empty"),
        ({"to ken": "x"}, "secrets", "a secret's name"),
    ],
)
def test_a_wrong_secret_names_its_key(secrets: dict[str, str], path: str, fragment: str) -> None:
    error = _error(provider(secrets=secrets))
    assert error.path == f"providers.vp2.{path}", str(error)
    assert fragment in str(error)


def test_the_signature_cannot_take_the_batch_parameter() -> None:
    table = provider(
        request={
            "url": "{base}/status",
            "batch": {"mode": "query", "param": "ids"},
            "sign": {"algorithm": "md5", "sorted_params": "query", "into": {"query": "ids"}},
        },
        reply={"tasks": "items[*]", "id": "id"},
    )
    error = _error(table)
    assert error.path == "providers.vp2.request.sign.into.query"
    assert "carries the batch's ids" in str(error)


def test_a_toml_date_cannot_be_signed_as_sorted_params() -> None:
    toml = (
        '[providers.vp2]\nkind = "http"\nbase_url = "https://x.example"\n'
        '[providers.vp2.request]\nmethod = "POST"\nurl = "{base}/s"\n'
        'json = { id = "{task_id}", day = 2026-12-01 }\n'
        '[providers.vp2.request.sign]\nalgorithm = "md5"\nsorted_params = "json"\n'
        'into = { json = "sig" }\n'
        '[providers.vp2.map.state]\npath = "s"\nvalues = { done = "succeeded" }\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(toml), env={})
    assert caught.value.path == "providers.vp2.request.json.day"
    assert "this holds a date" in str(caught.value)


def test_a_wrong_position_state_names_its_key() -> None:
    error = _error(provider(map={"position_in": ["queued", "later"]}))
    assert error.path == "providers.vp2.map.position_in[1]"
