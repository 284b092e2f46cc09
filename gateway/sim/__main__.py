"""``python -m gateway.sim [--host H] [--port P]``: serve the simulated upstreams."""

from __future__ import annotations

import argparse

from gateway.sim.server import serve_sim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    serve_sim(args.host, args.port)


if __name__ == "__main__":
    main()
