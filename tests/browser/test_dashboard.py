"""The dashboard and a raw-EventSource page in headless Chromium, against live servers.

Debian's Chromium (``/usr/bin/chromium``, from scripts/ensure-system-deps.sh)
driven by Playwright; no browser download. Screenshots go to
``test-output/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.integration.conftest import release_once_watched
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.sim_server import running_sim

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
WAIT_MS = 30_000

# Staggered so that a screenshot taken early shows every kind of state at once.
TIMELINES: dict[str, list[dict[str, Any]]] = {
    "ailab": [
        {"at": 0, "state": "queued"},
        {"at": 0.8, "state": "running"},
        {"at": 2.6, "state": "succeeded"},
    ],
    "aholo": [
        {"at": 0, "state": "queued"},
        {"at": 1.2, "state": "running"},
        {"at": 3.2, "state": "succeeded"},
    ],
    "tryon": [
        {"at": 0, "state": "queued", "position": 3},
        {"at": 0.8, "state": "queued", "position": 1},
        {"at": 2.2, "state": "running"},
        {"at": 3.8, "state": "succeeded"},
    ],
    "genpic": [
        {"at": 0, "state": "queued"},
        {"at": 1.0, "state": "running"},
        {"at": 4.4, "state": "succeeded"},
    ],
    "videoproc": [
        {"at": 0, "state": "running", "progress": 0, "message": "downloading"},
        {"at": 0.6, "state": "running", "progress": 20, "message": "downloading"},
        {"at": 1.4, "state": "running", "progress": 45, "message": "transcoding"},
        {"at": 2.4, "state": "running", "progress": 70, "message": "transcoding"},
        {"at": 3.4, "state": "running", "progress": 90, "message": "packaging"},
        {"at": 5.0, "state": "succeeded"},
    ],
}
FAILING = [{"at": 0, "state": "running"}, {"at": 2.0, "state": "failed"}]

ALL_TERMINAL = """(n) => {
  const cards = [...document.querySelectorAll('.card')];
  return cards.length === n
    && cards.every((c) => ['succeeded', 'failed'].includes(c.dataset.state));
}"""


def create_task(
    client: httpx.Client, sim: str, provider: str, timeline: list[Any], *, held: bool = False
) -> str:
    body = {"provider": provider, "timeline": timeline, "held": held}
    reply = client.post(f"{sim}/_sim/tasks", json=body)
    reply.raise_for_status()
    return f"{provider}:{reply.json()['task_id']}"


def snapshot(client: httpx.Client, base: str, task: str) -> dict[str, Any]:
    provider, _, task_id = task.partition(":")
    reply = client.get(f"{base}/v1/tasks/{provider}/{task_id}")
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    return body


def launch(playwright: Any) -> Browser:
    browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    return browser


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


def card_links(page: Page, task: str) -> list[str]:
    links: list[str] = page.eval_on_selector_all(
        f'.card[data-task="{task}"] .result a', "els => els.map(a => a.href)"
    )
    return links


def test_dashboard_follows_all_five_providers_to_completion() -> None:
    OUTPUT.mkdir(exist_ok=True)
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(timeout=10, trust_env=False) as client,
        sync_playwright() as playwright,
    ):
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors = watch_errors(page)
            # The timelines stand still until the page follows every task and the
            # gateway has polled each once (loading the page can take seconds on a
            # busy machine), so it sees them from the beginning.
            tasks = {p: create_task(client, sim, p, tl, held=True) for p, tl in TIMELINES.items()}
            failing = create_task(client, sim, "genpic", FAILING, held=True)
            keys = [*tasks.values(), failing]
            page.goto(f"{base}/?tasks={','.join(keys)}")
            page.wait_for_selector('#connection[data-status="open"]', timeout=WAIT_MS)
            release_once_watched(sim, base, dict.fromkeys(keys, 1))
            video_card = f'.card[data-task="{tasks["videoproc"]}"]'
            # Live progress: a step between the first and the last (a poll on a busy
            # machine can miss any one of them).
            page.wait_for_function(
                """(sel) => [...document.querySelectorAll(sel)]
                    .some((bar) => +bar.getAttribute('aria-valuenow') > 0)""",
                arg=f'{video_card}[data-state="running"] .bar',
                timeout=WAIT_MS,
            )
            live_shot = OUTPUT / "dashboard-live.png"
            page.screenshot(path=str(live_shot))
            page.wait_for_function(ALL_TERMINAL, arg=len(keys), timeout=WAIT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.thumb img')].every(i => i.complete)"
            )
            shot = OUTPUT / "dashboard-done.png"
            page.screenshot(path=str(shot), full_page=True, animations="disabled")
            print(f"screenshots: {shot} {live_shot}")

            for provider, task in tasks.items():
                card = f'.card[data-task="{task}"]'
                assert page.inner_text(f"{card} .badge") == "succeeded", provider
                assert page.get_attribute(f"{card} .bar", "aria-valuenow") == "100", provider
                # Every result URL of the snapshot is on the card, as a thumbnail or a file link.
                urls = snapshot(client, base, task)["result"]["urls"]
                assert urls, provider
                assert sorted(card_links(page, task)) == sorted(urls), provider
            for provider in ("tryon", "genpic"):  # PNG results: real, decoded thumbnails
                widths = page.eval_on_selector_all(
                    f'.card[data-task="{tasks[provider]}"] .thumb img',
                    "els => els.map(i => i.naturalWidth)",
                )
                assert widths and all(w > 0 for w in widths), provider
            model_files = page.eval_on_selector_all(
                f'.card[data-task="{tasks["aholo"]}"] .file', "els => els.map(a => a.dataset.kind)"
            )
            assert model_files == ["model", "model", "model"]
            assert "#3 in queue" not in page.inner_text("#grid")  # the queue has moved on

            fail_card = f'.card[data-task="{failing}"]'
            assert page.inner_text(f"{fail_card} .badge") == "failed"
            assert page.inner_text(f"{fail_card} .error").strip()

            assert page.inner_text(".stat-succeeded strong") == "5"
            assert page.inner_text(".stat-failed strong") == "1"
            assert page.get_attribute("#connection", "data-status") == "open"

            # The log holds each task's path to its final state, newest first.
            for task in keys:
                states = page.eval_on_selector_all(
                    f'#log .entry.kind-state[data-task="{task}"]',
                    "els => els.map(e => e.dataset.state)",
                )
                assert states and states[0] in ("succeeded", "failed"), (task, states)
                assert len(states) == len(set(states)), (task, states)
            progress_notes = page.eval_on_selector_all(
                f'#log .entry.kind-progress[data-task="{tasks["videoproc"]}"] .note',
                "els => els.map(e => e.textContent)",
            )
            # Each step a poll saw (a busy machine's poll can miss one of them).
            assert progress_notes, "no progress in the log"
            assert all(re.fullmatch(r"\d+% · \w+", note) for note in progress_notes), progress_notes
            assert errors == []

            # The same tasks over EventSource (watchTask) instead of the WebSocket.
            sse = browser.new_page(viewport={"width": 1360, "height": 900})
            sse_errors = watch_errors(sse)
            sse.goto(f"{base}/?transport=sse&tasks={','.join(keys)}")
            sse.wait_for_function(ALL_TERMINAL, arg=len(keys), timeout=WAIT_MS)
            assert sse.get_attribute("#connection", "data-status") == "sse"
            assert sse.inner_text(f'.card[data-task="{failing}"] .badge') == "failed"
            assert sse.inner_text(".stat-succeeded strong") == "5"
            assert sse_errors == []
        finally:
            browser.close()


def test_raw_eventsource_page_and_follow_every_polled_task() -> None:
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(timeout=10, trust_env=False) as client,
        sync_playwright() as playwright,
    ):
        task = create_task(client, sim, "videoproc", TIMELINES["videoproc"], held=True)
        background = create_task(client, sim, "aholo", [{"at": 0, "state": "running"}])
        provider, _, task_id = background.partition(":")
        client.post(f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id})
        browser = launch(playwright)
        try:
            raw = browser.new_page()
            errors = watch_errors(raw)
            raw.goto(f"{base}/examples/sse?task={task}")
            release_once_watched(sim, base, {task: 1})  # the page sees every step
            raw.wait_for_function(
                "() => document.getElementById('state').textContent === 'succeeded'",
                timeout=WAIT_MS,
            )
            lines = raw.eval_on_selector_all("#log li", "els => els.map(e => e.textContent)")
            ids = raw.eval_on_selector_all("#log li", "els => els.map(e => e.dataset.seq)")
            # A notice (a slow upstream on a busy machine) has no id of its own.
            seqs = [int(i) for i, line in zip(ids, lines, strict=True) if line[:6] != "notice"]
            assert lines[0].startswith("snapshot")
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
            assert "succeeded" in lines[-1] and "/videoproc/api/download/" in lines[-1]
            time.sleep(0.5)  # the page closed its EventSource: nothing more arrives
            assert raw.eval_on_selector_all("#log li", "els => els.length") == len(lines)
            assert errors == []

            # With no ?tasks=, the dashboard follows what the gateway polls.
            dash = browser.new_page()
            dash_errors = watch_errors(dash)
            dash.goto(f"{base}/")
            dash.wait_for_selector(
                f'.card[data-task="{background}"][data-state="running"]', timeout=WAIT_MS
            )
            assert dash.is_checked("#follow-all")
            assert "followed by the gateway" in dash.inner_text("#hint")
            assert dash_errors == []
        finally:
            browser.close()


@contextlib.contextmanager
def subscriber(client: httpx.Client, url: str) -> Iterator[None]:
    """An open SSE stream (its snapshot read), held until the block ends."""
    with client.stream("GET", url) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()  # held: dropping it closes the response
        while not next(lines).startswith("data:"):
            pass
        yield


def rows(page: Page) -> list[str]:
    tasks: list[str] = page.eval_on_selector_all(
        "#followed-rows tr", "els => els.map(e => e.dataset.task)"
    )
    return tasks


def watchers_cell(task: str) -> str:
    return f'#followed-rows tr[data-task="{task}"] .f-watchers'


def test_dashboard_lists_followed_tasks_pages_them_and_counts_watchers() -> None:
    OUTPUT.mkdir(exist_ok=True)
    running = [{"at": 0, "state": "running", "progress": 30}]
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(timeout=10, trust_env=False) as client,
        sync_playwright() as playwright,
    ):
        watched = []
        for n in range(25):
            spec = {"provider": "videoproc", "task_id": f"job-{n:02d}", "timeline": running}
            client.post(f"{sim}/_sim/tasks", json=spec).raise_for_status()
            reply = client.post(
                f"{base}/v1/tasks", json={"provider": "videoproc", "task_id": f"job-{n:02d}"}
            )
            assert reply.status_code == 201, reply.text
            watched.append(f"videoproc:job-{n:02d}")
        hot = watched[3]
        url = f"{base}/v1/tasks/videoproc/job-03/events"
        browser = launch(playwright)
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(subscriber(client, url))
                second = stack.enter_context(contextlib.ExitStack())
                second.enter_context(subscriber(client, url))

                page = browser.new_page(viewport={"width": 1360, "height": 1000})
                errors = watch_errors(page)
                page.goto(f"{base}/?follow=0&page_size=10")
                page.wait_for_function(
                    "() => document.querySelectorAll('#followed-rows tr').length === 10"
                )
                # Two SSE subscribers on one task: the list says 2, the others 0.
                page.wait_for_selector(f'{watchers_cell(hot)}[data-count="2"]', timeout=WAIT_MS)
                assert page.inner_text(watchers_cell(hot)) == "2"
                assert page.inner_text(watchers_cell(watched[0])) == "0"
                first = rows(page)
                assert first == watched[:10]
                assert page.inner_text(f'#followed-rows tr[data-task="{hot}"] .f-progress') == "30%"
                assert page.is_disabled("#page-prev")

                # Paging by the listing's cursor: every task once, in key order.
                seen = list(first)
                for number, size in ((2, 10), (3, 5)):
                    page.click("#page-next")
                    page.wait_for_function(
                        "([label, n, before]) => document.getElementById('page-label').textContent"
                        " === label && document.querySelectorAll('#followed-rows tr').length === n"
                        " && document.querySelector('#followed-rows tr').dataset.task !== before",
                        arg=[f"page {number}", size, seen[-size]],
                    )
                    seen.extend(rows(page))
                assert seen == watched
                assert page.is_disabled("#page-next")
                page.click("#page-prev")
                page.wait_for_function(
                    "() => document.getElementById('page-label').textContent === 'page 2'"
                )
                page.wait_for_function(
                    "(first) => document.querySelector('#followed-rows tr')"
                    "?.dataset.task === first",
                    arg=watched[10],
                )
                assert rows(page) == watched[10:20]
                page.click("#page-prev")
                page.wait_for_selector(f'{watchers_cell(hot)}[data-count="2"]', timeout=WAIT_MS)

                # One subscriber leaves: the count follows.
                second.close()
                page.wait_for_selector(f'{watchers_cell(hot)}[data-count="1"]', timeout=WAIT_MS)

                # Watching it here too: the card counts this page's own subscription.
                page.click(f'#followed-rows tr[data-task="{hot}"] .f-task button')
                card = f'.card[data-task="{hot}"]'
                page.wait_for_selector(f'{card}[data-state="running"]', timeout=WAIT_MS)
                page.wait_for_function(
                    "(sel) => document.querySelector(sel)?.textContent === '2 watching'",
                    arg=f"{card} .watchers",
                    timeout=WAIT_MS,
                )
                page.wait_for_selector(f'{watchers_cell(hot)}[data-count="2"]', timeout=WAIT_MS)
                assert page.inner_text(f"{card} .eta") == ""  # no eta_s in these events
                shot = OUTPUT / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True, animations="disabled")
                print(f"screenshot: {shot}")
                assert errors == []
        finally:
            browser.close()


def sse_body(task: str, eta_s: float | None) -> str:
    event = {
        "event": "snapshot",
        "task": task,
        "seq": 4,
        "state": "running",
        "terminal": False,
        "progress": 40,
        "position": None,
        "message": "rendering",
        "result": None,
        "error": None,
        "upstream": None,
        "updated_at": "2026-11-21T10:00:05.120Z",
        "observed_at": "2026-11-21T10:00:05.120Z",
        "eta_s": eta_s,
    }
    return f"retry: 600000\nid: 4\nevent: snapshot\ndata: {json.dumps(event)}\n\n"


def test_dashboard_shows_the_gateways_eta_when_events_carry_one() -> None:
    """Events with ``eta_s`` as the wire contract describes them, served to the page's
    EventSource: a number shows as time left, ``null`` shows nothing."""
    etas: dict[str, float | None] = {"ailab:eta-a": 12.4, "ailab:eta-b": None, "ailab:eta-c": 420}

    def serve(route: Route) -> None:
        task = "ailab:" + route.request.url.split("/v1/tasks/ailab/")[1].split("/")[0]
        route.fulfill(
            status=200,
            headers={"content-type": "text/event-stream", "cache-control": "no-store"},
            body=sse_body(task, etas[task]),
        )

    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        sync_playwright() as playwright,
    ):
        browser = launch(playwright)
        try:
            page = browser.new_page()
            errors = watch_errors(page)
            page.route("**/v1/tasks/ailab/eta-*/events*", serve)
            page.goto(f"{base}/?transport=sse&follow=0&tasks={','.join(etas)}")
            for task in etas:
                page.wait_for_selector(f'.card[data-task="{task}"][data-state="running"]')
            eta = {t: page.inner_text(f'.card[data-task="{t}"] .eta') for t in etas}
            assert eta == {
                "ailab:eta-a": "~12 s left",
                "ailab:eta-b": "",
                "ailab:eta-c": "~7 min left",
            }
            assert page.is_visible('.card[data-task="ailab:eta-a"] .eta')
            assert not page.is_visible('.card[data-task="ailab:eta-b"] .eta')
            assert errors == []
        finally:
            browser.close()


def test_dashboard_shows_the_eta_the_gateway_computes() -> None:
    """Real events: a task whose progress climbs steadily gets an ``eta_s`` from the
    gateway, and the card shows it (no estimate of the page's own)."""
    OUTPUT.mkdir(exist_ok=True)
    steady = [{"at": i * 0.5, "state": "running", "progress": 5 + i * 3} for i in range(30)]
    steady.append({"at": 15.0, "state": "succeeded"})
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (base, _gw),
        httpx.Client(timeout=10, trust_env=False) as client,
        sync_playwright() as playwright,
    ):
        task = create_task(client, sim, "videoproc", steady)
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors = watch_errors(page)
            page.goto(f"{base}/?transport=sse&follow=0&tasks={task}")
            card = f'.card[data-task="{task}"]'
            # The estimate is a progress rate over the polls seen so far: on a busy
            # machine the first polls come late and the first figure overshoots; it
            # settles as readings come in, to one that fits the timeline (which
            # ends 15 s after it starts).
            page.wait_for_function(
                """(sel) => {
                    const text = document.querySelector(sel)?.textContent ?? '';
                    const m = /^~(\\d+) s left$/.exec(text);
                    return m !== null && Number(m[1]) > 0 && Number(m[1]) <= 16;
                }""",
                arg=f"{card} .eta",
                timeout=WAIT_MS,
            )
            shown = int(page.inner_text(f"{card} .eta").split()[0][1:])
            current = snapshot(client, base, task)
            assert current["eta_s"] is not None and not current["terminal"]
            # What the page shows is the gateway's figure.
            assert abs(shown - current["eta_s"]) <= 3
            page.screenshot(path=str(OUTPUT / "dashboard-eta.png"), full_page=True)
            page.wait_for_selector(f'{card}[data-state="succeeded"]', timeout=WAIT_MS)
            assert page.inner_text(f"{card} .eta") == ""  # terminal: no estimate
            assert errors == []
        finally:
            browser.close()
