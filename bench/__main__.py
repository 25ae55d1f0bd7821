"""Run the benchmarks and write their results into docs/benchmarks.md.

Usage: ``uv run --all-extras python -m bench [NAME ...]`` (default: all).
"""

from __future__ import annotations

import argparse

from bench import (
    cache_list,
    embeddings,
    gateway,
    gateway_flush,
    multimodel,
    pull,
    reconcile,
    recovery,
    reload_latency,
    run_cli,
)

SUITES = {
    "reconcile": reconcile.main,
    "list": cache_list.main,
    "pull": pull.main,
    "gateway": gateway.main,
    "flush": gateway_flush.main,
    "reload": reload_latency.main,
    "run": run_cli.main,
    "multimodel": multimodel.main,
    "recovery": recovery.main,
    "embeddings": embeddings.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"suites to run: {', '.join(SUITES)} (default all)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=15,
        help="timed runs per command (gateway, flush: batches per path and level; reload: "
        "saves per measurement, at most 3 for the always model; pull: at most 7; list: at "
        "most 5 of mlx_lm manage; multimodel: 3 starts of each side; recovery: "
        "crashes, at most 3 wedges and 3 engine starts; embeddings: warm requests per way "
        "and size)",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    for name in args.names or list(SUITES):
        SUITES[name](runs=args.runs)


if __name__ == "__main__":
    main()
