"""``pollcast`` command line: serve, demo, sim, check-config, watch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway.config import load_config
from gateway.exceptions import BackendError, ConfigError
from gateway.logs import configure_logging
from gateway.redaction import for_config

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from msgspec.structs import replace

    from gateway.server import serve

    config = load_config(args.config)
    server = config.server
    if args.host or args.port:
        server = replace(server, host=args.host or server.host, port=args.port or server.port)
        config = replace(config, server=server)
    configure_logging(args.log_format or config.server.log_format, redactor=for_config(config))
    if config.backend.kind == "local":
        from gateway.hub.local import check_writable

        # Before uvicorn: a failure in its lifespan would be a traceback and exit 0.
        check_writable(config.backend.path)
    serve(config, allow_open_public=args.allow_open_public)
    return 0


def _sim(args: argparse.Namespace) -> int:
    from gateway.sim.server import serve_sim

    configure_logging("text")
    serve_sim(args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo_toml, run_demo

    if args.print_config:
        sys.stdout.write(demo_toml(args.port, args.sim_port))
        return 0
    configure_logging("text")
    run_demo(args.port, args.sim_port, feed=not args.no_feed)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: OK")
    print(f"  backend: {config.backend.kind}   auth: {config.auth.mode}")
    for name, runtime in config.runtimes().items():
        d = runtime.describe()
        print(
            f"  provider {name} ({d['kind']}): every {d['interval_s']:g} s "
            f"(max {d['max_interval_s']:g} s), batch {d['batch_size']}, "
            f"{d['rate_per_s']:g} req/s, {d['concurrency']} in flight"
        )
    from gateway.providers import kind_origin

    if config.providers:
        print("  kinds in use:")
    for kind in sorted({p.kind for p in config.providers.values()}):
        print(f"    {kind}: {kind_origin(kind)}")
    if args.probe:
        from gateway.probe import run_probe

        return run_probe(config, args.probe, sys.stdout)
    return 0


def _watch(args: argparse.Namespace) -> int:
    # The watcher lives in the separate client package (clients/python), which
    # the gateway does not depend on: import it by name, only when asked for.
    try:
        watch_cli = importlib.import_module("pollcast_client.watch_cli")
    except ImportError as exc:
        print(
            f"pollcast watch needs the pollcast-client package "
            f"(pip install -e clients/python): {exc}",
            file=sys.stderr,
        )
        return 2
    code: int = watch_cli.main(args.argv, prog="pollcast watch")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pollcast", description="Poll each upstream task once; push every transition."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", "-c", default="pollcast.toml")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument(
        "--allow-open-public",
        action="store_true",
        help="permit auth mode 'open' on a non-loopback address",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="simulator + gateway + sample tasks, all in one")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sim-port", type=int, default=8001)
    p.add_argument("--print-config", action="store_true", help="print the demo's TOML and exit")
    p.add_argument("--no-feed", action="store_true", help="do not create sample tasks")
    p.set_defaults(func=_demo)

    p = sub.add_parser("sim", help="run the simulated upstreams alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.set_defaults(func=_sim)

    p = sub.add_parser("check-config", help="validate a config file and show the policies")
    p.add_argument("--config", "-c", default="pollcast.toml")
    p.add_argument(
        "--probe",
        metavar="PROVIDER:TASK_ID",
        help="send one live status request; show the raw reply and the normalized observation",
    )
    p.set_defaults(func=_check_config)

    # Every argument goes to the watcher's own parser (its --help included):
    # with no prefix characters, nothing here is read as an option.
    p = sub.add_parser(
        "watch",
        help="follow tasks live in the terminal (needs pollcast-client)",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("argv", nargs="*")
    p.set_defaults(func=_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"pollcast: config error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"pollcast: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
