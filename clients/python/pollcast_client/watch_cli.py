"""``pollcast watch`` / ``pollcast-watch``: follow tasks live in a terminal.

::

    pollcast watch ailab:7f3c9e aholo:42 [--url http://127.0.0.1:8000] [--token T] [--json]

On a terminal it keeps one line per task up to date — state, a progress bar,
queue position, elapsed time and, when the gateway has one, its ETA —
by moving the cursor back over those lines and redrawing them (plain ANSI,
no full-screen UI). When stdout is not a terminal it prints one line per
event instead; ``--json`` prints the events themselves as NDJSON. At the end
it lists each task's result URLs (or its error).

Exit status: 0 when every task succeeded, 1 when any ended ``failed``,
``cancelled``, ``expired`` or ``rejected``, 2 when a task could not be
watched (bad task key, unreachable gateway), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from pollcast_client.client import Reconnecting, watch
from pollcast_client.errors import ProtocolError
from pollcast_client.events import AnyEvent, Notice, State, encode
from pollcast_client.resume import DEFAULT_RECONNECT, Reconnect

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNSUCCESSFUL",
    "EtaCountdown",
    "WatchedTask",
    "add_arguments",
    "columns",
    "exit_code",
    "format_duration",
    "main",
    "printable",
    "run",
    "watch_tasks",
]

EXIT_OK = 0
EXIT_UNSUCCESSFUL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8000"
TICK_S = 0.5  # how often a terminal display refreshes elapsed time and ETA
BAR_CELLS = 20
MAX_TASK_COLUMN = 40

# SGR colours per state (ECMA-48): yellow, cyan, green, red, magenta, dim.
_STATE_STYLE = {
    State.QUEUED: "33",
    State.RUNNING: "36",
    State.SUCCEEDED: "32",
    State.FAILED: "31",
    State.REJECTED: "31",
    State.CANCELLED: "35",
    State.EXPIRED: "35",
    State.UNKNOWN: "2",
}


# -- pure parts: estimating and formatting -------------------------------------


def format_duration(seconds: float) -> str:
    """``65`` → ``"1:05"``, ``3725`` → ``"1:02:05"``."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EtaCountdown:
    """The gateway's estimate of the time left (``eta_s``), counted down locally.

    The gateway computes the estimate (``gateway/core/eta.py``); this only
    counts it down. ``eta_s`` is as of the event's ``observed_at``, so an
    event that arrives late (a snapshot of a state reached minutes ago) is
    aged by ``age_s`` — the local wall clock minus ``observed_at``, never
    negative, so a local clock behind the server's cannot add time. After
    that the countdown runs on the local monotonic clock. An event without
    an estimate (``null``) clears it: the gateway does not know.
    """

    def __init__(self) -> None:
        self._left_s: float | None = None
        self._seen_s = 0.0

    def observe(self, eta_s: float | None, *, age_s: float, seen_s: float) -> None:
        self._left_s = None if eta_s is None else max(0.0, eta_s - max(0.0, age_s))
        self._seen_s = seen_s

    def remaining_s(self, now_s: float) -> float | None:
        if self._left_s is None:
            return None
        return max(0.0, self._left_s - (now_s - self._seen_s))


@dataclass
class WatchedTask:
    """What the watcher knows about one task."""

    task: str
    started_s: float
    event: AnyEvent | None = None
    ended_s: float | None = None
    note: str | None = None  # e.g. "reconnecting in 1.2 s"
    error: BaseException | None = None  # the task could not be watched
    eta: EtaCountdown = field(default_factory=EtaCountdown)

    @property
    def done(self) -> bool:
        return self.ended_s is not None

    @property
    def state(self) -> State | None:
        return self.event.state if self.event is not None else None

    def apply(self, event: AnyEvent, now_s: float, wall_s: float | None = None) -> None:
        """Take ``event`` in at local monotonic time ``now_s`` (and wall time ``wall_s``)."""
        if isinstance(event, Notice):
            self.note = f"{event.code}: {event.message}" if event.code else event.message
            return
        self.event = event
        self.note = None
        observed = event.observed_at
        age = 0.0 if wall_s is None or observed is None else wall_s - observed.timestamp()
        self.eta.observe(None if event.terminal else event.eta_s, age_s=age, seen_s=now_s)
        if event.terminal:
            self.ended_s = now_s

    def fail(self, error: BaseException, now_s: float) -> None:
        self.error = error
        self.note = None
        self.ended_s = now_s

    def elapsed_s(self, now_s: float) -> float:
        return (self.ended_s if self.ended_s is not None else now_s) - self.started_s


def exit_code(views: Sequence[WatchedTask]) -> int:
    if any(view.error is not None for view in views):
        return EXIT_ERROR
    if all(view.state is State.SUCCEEDED for view in views):
        return EXIT_OK
    return EXIT_UNSUCCESSFUL


Segment = tuple[str, str | None]  # (text, SGR parameters or None)


def printable(text: str) -> str:
    """Control characters (newlines, ESC…) from upstream messages become spaces.

    Upstream text is shown as text: it can neither break the line layout nor
    send escape sequences to the terminal.
    """
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def columns(char: str) -> int:
    """Terminal cells a character takes: 2 for East Asian wide, 0 for combining marks."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _fit(segments: list[Segment], width: int) -> list[Segment]:
    """Cut the line to ``width`` terminal cells (a wrapped line breaks the redraw)."""
    out: list[Segment] = []
    room = width
    for text, style in segments:
        kept = 0
        for char in text:
            cells = columns(char)
            if cells > room:
                break
            room -= cells
            kept += 1
        out.append((text[:kept], style))
        if kept < len(text):
            break
    return out


def _paint(segments: list[Segment], color: bool) -> str:
    if not color:
        return "".join(text for text, _ in segments)
    return "".join(f"\x1b[{style}m{text}\x1b[0m" if style else text for text, style in segments)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bar(view: WatchedTask, unicode: bool) -> str:
    event = view.event
    full, empty = ("█", "░") if unicode else ("#", "-")
    if event is None or event.progress is None:
        cells = BAR_CELLS if view.state is State.SUCCEEDED else 0
        fill = full if cells else " "
        return "[" + fill * cells + " " * (BAR_CELLS - cells) + "]"
    cells = round(BAR_CELLS * min(100, max(0, event.progress)) / 100)
    return "[" + full * cells + empty * (BAR_CELLS - cells) + "]"


def _percent(view: WatchedTask) -> str:
    event = view.event
    if event is not None and event.progress is not None:
        return f"{event.progress:3d}%"
    return "100%" if view.state is State.SUCCEEDED else "  --"


def _details(view: WatchedTask, now_s: float) -> list[str]:
    parts: list[str] = []
    event = view.event
    if event is not None and event.position is not None and not event.terminal:
        parts.append(f"#{event.position} in queue")
    parts.append(format_duration(view.elapsed_s(now_s)))
    if not view.done:
        eta = view.eta.remaining_s(now_s)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
    if view.error is not None:
        parts.append(f"error: {view.error}")
    elif view.note:
        parts.append(view.note)
    elif event is not None and event.error is not None:
        parts.append(f"{event.error.code}: {event.error.message}")
    elif event is not None and event.message:
        parts.append(event.message)
    return parts


def render_line(
    view: WatchedTask, now_s: float, *, task_width: int, width: int, color: bool, unicode: bool
) -> str:
    """One task's status line, at most ``width`` characters wide when printed."""
    state = view.state
    label = "error" if view.error is not None else state.value if state else "connecting"
    style = "31" if view.error is not None else _STATE_STYLE.get(state) if state else "2"
    segments: list[Segment] = [
        (printable(_clip(view.task, task_width)).ljust(task_width) + "  ", None),
        (label.ljust(11), style),
        (_bar(view, unicode) + " " + _percent(view) + "  ", None),
        (printable("  ".join(_details(view, now_s))), None),
    ]
    return _paint(_fit(segments, width), color)


def render_event(view: WatchedTask, event: AnyEvent, now_s: float) -> str:
    """One plain line per event, for logs and pipes."""
    stamp = format_duration(view.elapsed_s(now_s))
    if isinstance(event, Notice):
        line = f"{stamp} {event.task} notice {event.code or ''}: {event.message or ''}"
        return printable(line.rstrip())
    parts = [stamp, event.task, event.state.value]
    if event.progress is not None:
        parts.append(f"{event.progress}%")
    if event.position is not None and not event.terminal:
        parts.append(f"#{event.position} in queue")
    eta = None if event.terminal else view.eta.remaining_s(now_s)
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    if event.error is not None:
        parts.append(f"{event.error.code}: {event.error.message}")
    elif event.message:
        parts.append(event.message)
    return printable(" ".join(parts))


def render_results(views: Sequence[WatchedTask], color: bool) -> list[str]:
    """The closing summary: each task's outcome, then its named files and other URLs."""
    lines: list[str] = []
    for view in views:
        event = view.event
        task = printable(view.task)
        if view.error is not None:
            error = printable(str(view.error))
            lines.append(_paint([(task, None), ("  error", "31")], color) + f": {error}")
            continue
        if event is None:
            continue
        state = event.state
        head: list[Segment] = [(task + "  ", None), (state.value, _STATE_STYLE.get(state))]
        if event.error is not None:
            head.append((printable(f"  {event.error.code}: {event.error.message}"), None))
        lines.append(_paint(head, color))
        if event.result is not None:
            files = event.result.files
            lines.extend(printable(f"  {name}: {url}") for name, url in files.items())
            named = set(files.values())
            lines.extend(printable(f"  {url}") for url in event.result.urls if url not in named)
    return lines


# -- displays ------------------------------------------------------------------------------


class Display(Protocol):
    tick_s: float | None

    def start(self, views: Sequence[WatchedTask]) -> None: ...
    def event(self, views: Sequence[WatchedTask], view: WatchedTask, event: AnyEvent) -> None: ...
    def changed(self, views: Sequence[WatchedTask], view: WatchedTask) -> None: ...
    def tick(self, views: Sequence[WatchedTask]) -> None: ...
    def finish(self, views: Sequence[WatchedTask]) -> None: ...


class LiveScreen:
    """Redraws one line per task in place (cursor up, erase line, rewrite)."""

    tick_s: float | None = TICK_S

    def __init__(self, out: TextIO, *, color: bool, clock: Callable[[], float]) -> None:
        self.out = out
        self.color = color
        self.clock = clock
        self.unicode = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
        self.drawn = 0

    def _draw(self, views: Sequence[WatchedTask]) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        task_width = min(MAX_TASK_COLUMN, max(len(v.task) for v in views))
        now = self.clock()
        parts = [f"\x1b[{self.drawn}A"] if self.drawn else []
        for view in views:
            line = render_line(
                view,
                now,
                task_width=task_width,
                width=width,
                color=self.color,
                unicode=self.unicode,
            )
            parts.append("\r\x1b[2K" + line + "\n")
        self.drawn = len(views)
        self.out.write("".join(parts))
        self.out.flush()

    def start(self, views: Sequence[WatchedTask]) -> None:
        self.out.write("\x1b[?25l")  # hide the cursor while redrawing
        self._draw(views)

    def event(self, views: Sequence[WatchedTask], view: WatchedTask, event: AnyEvent) -> None:
        self._draw(views)

    def changed(self, views: Sequence[WatchedTask], view: WatchedTask) -> None:
        self._draw(views)

    def tick(self, views: Sequence[WatchedTask]) -> None:
        self._draw(views)

    def finish(self, views: Sequence[WatchedTask]) -> None:
        self._draw(views)
        lines = ["", *render_results(views, self.color)]
        self.out.write("\x1b[?25h" + "".join(line + "\n" for line in lines))
        self.out.flush()


class LineLog:
    """One line per event: for logs and pipes."""

    tick_s: float | None = None

    def __init__(self, out: TextIO, *, clock: Callable[[], float]) -> None:
        self.out = out
        self.clock = clock

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def start(self, views: Sequence[WatchedTask]) -> None:
        pass

    def event(self, views: Sequence[WatchedTask], view: WatchedTask, event: AnyEvent) -> None:
        self._print(render_event(view, event, self.clock()))

    def changed(self, views: Sequence[WatchedTask], view: WatchedTask) -> None:
        if view.error is not None:
            self._print(f"{view.task} error: {view.error}")
        elif view.note:
            self._print(f"{view.task} {view.note}")

    def tick(self, views: Sequence[WatchedTask]) -> None:
        pass

    def finish(self, views: Sequence[WatchedTask]) -> None:
        self._print("")
        for line in render_results(views, color=False):
            self._print(line)


class JsonLines:
    """The events themselves, one JSON object per line; problems go to stderr."""

    tick_s: float | None = None

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def start(self, views: Sequence[WatchedTask]) -> None:
        pass

    def event(self, views: Sequence[WatchedTask], view: WatchedTask, event: AnyEvent) -> None:
        self.out.write(encode(event).decode() + "\n")
        self.out.flush()

    def changed(self, views: Sequence[WatchedTask], view: WatchedTask) -> None:
        if view.error is not None:
            self.err.write(f"{view.task}: error: {view.error}\n")
        elif view.note:
            self.err.write(f"{view.task}: {view.note}\n")
        self.err.flush()

    def tick(self, views: Sequence[WatchedTask]) -> None:
        pass

    def finish(self, views: Sequence[WatchedTask]) -> None:
        pass


# -- the driver ----------------------------------------------------------------------------


class _Tick:
    pass


_Update = tuple[WatchedTask, AnyEvent | Reconnecting | BaseException | None] | _Tick


async def watch_tasks(
    base_url: str,
    tasks: Sequence[str],
    display: Display,
    *,
    token: str | None = None,
    reconnect: Reconnect = DEFAULT_RECONNECT,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> int:
    """Follow ``tasks`` until each ended (or failed to be watched); return the exit status."""
    now = clock()
    views = [WatchedTask(task, now) for task in dict.fromkeys(tasks)]
    updates: asyncio.Queue[_Update] = asyncio.Queue()

    async def follow(view: WatchedTask) -> None:
        def note(info: Reconnecting) -> None:
            updates.put_nowait((view, info))

        try:
            async for event in watch(
                base_url, view.task, token, reconnect=reconnect, on_reconnect=note
            ):
                updates.put_nowait((view, event))
            updates.put_nowait((view, None))
        except Exception as exc:  # shown on the task's line; the exit status says 2
            updates.put_nowait((view, exc))

    async def ticker(every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            updates.put_nowait(_Tick())

    display.start(views)
    # Plain tasks, not a TaskGroup: follow() reports its own errors, and a
    # display error (a closed pipe) should surface as itself, not in a group.
    workers = [asyncio.create_task(follow(view)) for view in views]
    if display.tick_s:
        workers.append(asyncio.create_task(ticker(display.tick_s)))
    try:
        while not all(view.done for view in views):
            update = await updates.get()
            if isinstance(update, _Tick):
                display.tick(views)
                continue
            view, item = update
            match item:
                case Reconnecting(delay_s=delay, error=error):
                    why = f": {error}" if error is not None else ""
                    view.note = f"reconnecting in {delay:.1f} s{why}"
                    display.changed(views, view)
                case BaseException():
                    view.fail(item, clock())
                    display.changed(views, view)
                case None:
                    if not view.done:
                        view.fail(ProtocolError("the stream ended before the task did"), clock())
                        display.changed(views, view)
                case _:
                    view.apply(item, clock(), wall())
                    display.event(views, view, item)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    display.finish(views)
    return exit_code(views)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The watcher's options, shared by ``pollcast-watch`` and ``pollcast watch``."""
    parser.add_argument("tasks", nargs="+", metavar="TASK", help="provider:task_id")
    parser.add_argument(
        "--url",
        default=os.environ.get("POLLCAST_URL", DEFAULT_URL),
        help=f"the gateway (default: $POLLCAST_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("POLLCAST_TOKEN"),
        help="API key or subscriber token (default: $POLLCAST_TOKEN)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the events as NDJSON instead of progress bars"
    )
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours")


def run(args: argparse.Namespace) -> int:
    """Run the watcher with parsed arguments; return the exit status."""
    out = sys.stdout
    display: Display
    if args.json:
        display = JsonLines(out, sys.stderr)
    elif out.isatty():
        color = not args.no_color and "NO_COLOR" not in os.environ
        display = LiveScreen(out, color=color, clock=time.monotonic)
    else:
        display = LineLog(out, clock=time.monotonic)
    try:
        return asyncio.run(watch_tasks(args.url, args.tasks, display, token=args.token))
    except KeyboardInterrupt:
        if isinstance(display, LiveScreen):
            with contextlib.suppress(OSError):
                out.write("\x1b[?25h\n")
                out.flush()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``… --json | head -1``): say nothing more.
        # Pointing stdout at /dev/null stops Python's own complaint at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return EXIT_ERROR


def build_parser(prog: str = "pollcast-watch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Follow pollcast tasks live: progress bars on a terminal, NDJSON with --json.",
        epilog="exit status: 0 all succeeded, 1 a task failed/cancelled/expired/rejected, "
        "2 a task could not be watched",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "pollcast-watch") -> int:
    """The console script; ``pollcast watch`` calls it with ``prog="pollcast watch"``."""
    return run(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
