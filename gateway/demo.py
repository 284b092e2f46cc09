"""``pollcast demo``: the simulator, a gateway wired to it, and tasks to watch.

The simulator runs in a background thread, the gateway in the main thread
(so it owns the signals and drains on Ctrl-C), and a feeder thread keeps
creating sample tasks on all five providers and prints their events as it
receives them over the gateway's own SSE stream.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import tomllib

import aiohttp
import msgspec
import uvicorn

from gateway.config import parse_config
from gateway.sim.credentials import SIM_CREDENTIALS
from gateway.sim.server import uvicorn_config as sim_uvicorn_config

__all__ = ["demo_toml", "run_demo"]

# The demo polls faster than the documented defaults so transitions show up
# within seconds; remove these lines for the upstreams' own policies.
_DEMO_INTERVALS = {"ailab": 1, "aholo": 1, "tryon": 2, "genpic": 1, "videoproc": 1}


def demo_toml(port: int = 8000, sim_port: int = 8001) -> str:
    """The configuration the demo runs with, as a starting point for a real one."""
    creds = SIM_CREDENTIALS.provider_credentials(f"http://127.0.0.1:{sim_port}")
    lines = [
        "# pollcast demo configuration, wired to the simulator (pollcast sim).",
        "# For a real deployment: point base_url at the real APIs and move every",
        '# credential into the environment, e.g. api_key = "${AILAB_API_KEY}".',
        "",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        "[backend]",
        'kind = "local"',
        'path = "pollcast-state.db"',
        "",
        "[auth]",
        'mode = "open"',
    ]
    for kind, table in creds.items():
        lines += ["", f"[providers.{kind}]", f'kind = "{kind}"']
        lines += [f'{key} = "{value}"' for key, value in table.items()]
        lines.append(f"interval_s = {_DEMO_INTERVALS[kind]}")
    return "\n".join(lines) + "\n"


def _timeline(provider: str, n: int) -> list[dict[str, object]]:
    """A short, plausible life: queue, run with progress, end (now and then badly)."""
    ending = "failed" if n % 5 == 4 else "succeeded"
    steps: list[dict[str, object]] = [{"at": 0, "state": "queued", "position": 3}]
    if provider == "tryon":
        steps += [{"at": 3, "state": "queued", "position": 1}, {"at": 6, "state": "running"}]
    elif provider == "aholo":
        steps += [{"at": 3, "state": "running", "native": 8}, {"at": 6, "state": "running"}]
    else:
        steps.append({"at": 3, "state": "running", "progress": 10})
    if provider == "videoproc":
        steps += [
            {"at": 5, "state": "running", "progress": 40, "message": "downloading"},
            {"at": 8, "state": "running", "progress": 80, "message": "transcoding"},
        ]
    steps.append({"at": 12, "state": ending})
    return steps


async def _feed(base: str, sim: str) -> None:
    providers = ["ailab", "aholo", "tryon", "genpic", "videoproc"]
    # No total timeout: the event streams stay open for each task's whole life.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        for _ in range(100):
            try:
                async with client.get(f"{base}/readyz") as ready:
                    if ready.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        print(_banner(base, sim), flush=True)
        watchers: set[asyncio.Task[None]] = set()
        for n in itertools.count():
            provider = providers[n % len(providers)]
            async with client.post(
                f"{sim}/_sim/tasks",
                json={"provider": provider, "timeline": _timeline(provider, n // 5)},
            ) as reply:
                task = f"{provider}:{(await reply.json())['task_id']}"
            watcher = asyncio.create_task(_watch(client, base, task))
            watchers.add(watcher)
            watcher.add_done_callback(watchers.discard)
            # The first task of each provider at once, so that all five show from
            # the start; then a new one every few seconds.
            if n >= len(providers) - 1:
                await asyncio.sleep(3.0 if len(watchers) < 10 else 6.0)


async def _watch(client: aiohttp.ClientSession, base: str, task: str) -> None:
    provider, _, task_id = task.partition(":")
    url = f"{base}/v1/tasks/{provider}/{task_id}/events"
    decoder = msgspec.json.Decoder()
    async with client.get(url, headers={"Accept": "application/x-ndjson"}) as reply:
        async for line in reply.content:
            if not line.strip():
                continue
            event = decoder.decode(line)
            progress = f" {event['progress']}%" if event.get("progress") is not None else ""
            position = f" #{event['position']}" if event.get("position") else ""
            note = f"  {event['message']}" if event.get("message") else ""
            urls = event["result"]["urls"] if event.get("result") else []
            result = f"  → {urls[0]}" if urls else ""
            print(
                f"{time.strftime('%H:%M:%S')}  {task:32.32} {event['event']:8} "
                f"{event['state']:9}{progress}{position}{note}{result}",
                flush=True,
            )


def _banner(base: str, sim: str) -> str:
    return f"""
pollcast demo is running.
  gateway    {base}        (providers: {base}/v1/providers)
  simulator  {sim}/_sim/stats
Sample tasks are created every few seconds on all five providers; their
events appear below as the gateway pushes them. Try one yourself:

  curl -s -X POST {sim}/_sim/tasks -H 'content-type: application/json' -d '{{
    "provider": "videoproc", "timeline": [{{"at": 0, "state": "running", "progress": 5}},
    {{"at": 4, "state": "running", "progress": 60}}, {{"at": 8, "state": "succeeded"}}]}}'
  curl -N {base}/v1/tasks/videoproc/<task_id>/events
  curl -N -H 'Accept: application/x-ndjson' {base}/v1/tasks/videoproc/<task_id>/events | jq .

Ctrl-C stops everything.
"""


def run_demo(port: int = 8000, sim_port: int = 8001, *, feed: bool = True) -> None:
    from gateway.server import DrainingServer, uvicorn_config
    from gateway.web.app import create_app

    sim_server = uvicorn.Server(sim_uvicorn_config("127.0.0.1", sim_port))
    threading.Thread(target=sim_server.run, name="sim", daemon=True).start()
    config = parse_config(tomllib.loads(demo_toml(port, sim_port)))
    app = create_app(config)
    base = f"http://127.0.0.1:{port}"
    if feed:
        sim = f"http://127.0.0.1:{sim_port}"
        threading.Thread(
            target=lambda: asyncio.run(_feed(base, sim)), name="feed", daemon=True
        ).start()
    DrainingServer(uvicorn_config(app, config), app.state.gateway).run()
    sim_server.should_exit = True
