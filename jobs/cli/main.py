"""The ``oscar`` command: parse, validate, call the job; one line per bad input.

    oscar compress IN... -o OUT_DIR --rate R     -> OUT_DIR/<stem>.oscar        (codec.py)
    oscar decompress IN.oscar... -o OUT_DIR      -> OUT_DIR/<stem>.png
    (both: --precision fp32|bf16, bf16 autocast of the heavy stages; oscar_core/precision.py)
    oscar info FILE                              -> JSON on stdout
    oscar rates [--json]                         -> the rate ladder
    oscar encode-shards / decode-shards / status / recompress                     (shards.py)
    oscar import-reference / fit-entropy / fit-context / take-rates               (model.py)
    oscar train                                  -> jobs.train                    (train.py)
    oscar eval / eval-autoencoder                -> jobs.eval                     (eval.py)
    oscar bench                                  -> jobs.bench                    (bench.py)
    oscar demo                                   -> jobs.demo                     (demo.py)

Exit status: 0 when every input succeeded, 2 when any input was bad (the others are still
processed; each failure is one line ``oscar: error: <input>: <reason>`` on stderr); the
shard jobs add 1 for a shard that failed every retry. Heavy libraries (torch's models, Ray,
pyarrow) are imported when a verb runs, so ``oscar --help`` stays quick. ``python -m jobs.cli``
runs the same ``main`` as the ``oscar`` entry point (``__main__.py``).
"""

from __future__ import annotations

import argparse

from jobs.cli import bench, codec, demo, model, shards, train
from jobs.cli import eval as eval_cli
from jobs.cli.common import EXIT_BAD_INPUT, print_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oscar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    codec.add_commands(sub)
    train.add_commands(sub)
    eval_cli.add_commands(sub)
    bench.add_commands(sub)
    demo.add_commands(sub)
    shards.add_commands(sub)
    model.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print_error(args.command, str(exc))
        return EXIT_BAD_INPUT
