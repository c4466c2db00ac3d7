"""``oscar bench``: a ``BenchConfig`` for ``jobs.bench`` (bench.json + bench.md)."""

from __future__ import annotations

import argparse

from jobs.cli.common import add_command, config_from_args


def cmd_bench(args: argparse.Namespace) -> int:
    from jobs.bench.job import BenchConfig, parse_sections, run

    return run(config_from_args(BenchConfig, args, sections=parse_sections(args.sections)))


def add_commands(sub: argparse._SubParsersAction) -> None:
    help_text = "benchmark the codec and the pipeline (bench.json + bench.md)"
    p = add_command(sub, "bench", cmd_bench, help_text)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 image at 256 px, 1 rate")
    p.add_argument("--out", default="docs/benchmarks", metavar="DIR")
    p.add_argument("--images", default=None, metavar="DIR", help="default: jobs/samples")
    p.add_argument("--sections", default=None, help="e.g. 1,2,3,7 (default: all, 1..12)")
    p.add_argument("--rates", default=None, help="ladder indices, e.g. 0,3,7 (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--precision",
        default=None,
        metavar="P[,P]",
        help="sections 2 and 3: fp32,bf16 side by side (default: both where the CPU has bf16)",
    )
