"""The AsyncAPI builder (pure): its schemas are msgspec's, its references resolve."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.core.model import Event
from gateway.core.protocol import ErrorFrame, Subscribe
from gateway.web.asyncapi import WebhookPayload, asyncapi_document

REF = "#/components/schemas/{name}"


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_schemas_are_generated_from_the_wire_types() -> None:
    document = asyncapi_document(host="gw.example:8000")
    schemas = document["components"]["schemas"]
    _, generated = msgspec.json.schema_components(
        [Event, Subscribe, ErrorFrame, WebhookPayload], ref_template=REF
    )
    for name in ("Event", "Subscribe", "ErrorFrame", "WebhookPayload", "State", "Result"):
        assert schemas[name] == generated[name], name


def test_every_reference_resolves() -> None:
    document = asyncapi_document(host="gw.example:8000", token_auth=True)
    found = refs(document)
    assert len(found) > 30
    for ref in found:
        resolve(document, ref)  # a KeyError names the dangling one


def test_servers_follow_the_request_and_the_auth_mode() -> None:
    plain = asyncapi_document(host="gw.example:8000")
    assert plain["servers"]["http"] == {
        **plain["servers"]["http"],
        "host": "gw.example:8000",
        "protocol": "http",
        "security": [],
    }
    secure = asyncapi_document(host="gw.example", secure=True, token_auth=True)
    assert (secure["servers"]["http"]["protocol"], secure["servers"]["ws"]["protocol"]) == (
        "https",
        "wss",
    )
    assert secure["servers"]["ws"]["security"] == [
        {"$ref": "#/components/securitySchemes/apiKey"},
        {"$ref": "#/components/securitySchemes/subscriberToken"},
    ]


def test_each_document_is_its_own_copy() -> None:
    first = asyncapi_document(host="a")
    first["components"]["schemas"]["Event"]["properties"].clear()
    assert asyncapi_document(host="a")["components"]["schemas"]["Event"]["properties"]
