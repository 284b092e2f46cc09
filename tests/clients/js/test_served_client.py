"""The client module the gateway serves is the one in clients/js: one file, two paths.

An installed wheel has no ``clients/`` folder, so the file lives in
``gateway/web/static/`` and ``clients/js/pollcast.js`` links to it. These
tests check that, and what the dashboard routes serve.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx

from gateway.web import dashboard
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.sim_server import running_sim

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "clients" / "js" / "pollcast.js"
PACKAGED = REPO / "gateway" / "web" / "static" / "pollcast.js"


def test_the_client_has_one_source() -> None:
    assert SOURCE.is_symlink() and SOURCE.resolve() == PACKAGED.resolve()
    assert dashboard.CLIENT_JS.resolve() == PACKAGED.resolve()


def test_static_files_are_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "web/static/*" in pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    for name in ("pollcast.js", "dashboard.js", "dashboard.css", "dashboard.html"):
        assert (dashboard.STATIC_DIR / name).is_file(), name


def test_the_gateway_serves_the_client_and_the_pages() -> None:
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(base_url=base, trust_env=False, timeout=10) as client,
    ):
        module = client.get("/static/pollcast.js")
        again = client.get("/static/pollcast.js", headers={"If-None-Match": module.headers["etag"]})
        page = client.get("/")
        example = client.get("/examples/sse")
        missing = client.get("/static/..%2Fdashboard.py")
        listing = client.get("/v1/tasks", params={"limit": 0})

    assert module.status_code == 200
    assert module.content == SOURCE.read_bytes()
    assert module.headers["content-type"].startswith("text/javascript")
    assert again.status_code == 304 and again.content == b""
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/dashboard.js">' in page.text
    assert "new EventSource(" in example.text
    assert missing.status_code == 404
    assert listing.status_code == 400


def test_task_listing_holds_what_the_gateway_follows() -> None:
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(base_url=base, trust_env=False, timeout=10) as client,
    ):
        created = client.post(
            f"{sim}/_sim/tasks",
            json={"provider": "tryon", "timeline": [{"at": 0, "state": "queued", "position": 4}]},
        ).json()
        empty = client.get("/v1/tasks").json()
        client.post("/v1/tasks", json={"provider": "tryon", "task_id": created["task_id"]})
        listed = client.get("/v1/tasks").json()

    assert empty == {"tasks": [], "next_cursor": None}
    assert listed["next_cursor"] is None
    [item] = listed["tasks"]
    assert item["task"] == f"tryon:{created['task_id']}"
    assert item["watched"] is True and item["watchers"] == 0
    assert item["state"] == "queued"
    assert item["position"] == 4
