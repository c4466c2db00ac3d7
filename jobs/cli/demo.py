"""``oscar demo``: a ``DemoConfig`` for ``jobs.demo`` (the shard pipeline end to end)."""

from __future__ import annotations

import argparse

from jobs.cli.common import add_command, config_from_args


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo.job import DemoConfig, run

    return run(config_from_args(DemoConfig, args))


def add_commands(sub: argparse._SubParsersAction) -> None:
    help_text = "the shard pipeline end to end on the bundled samples"
    p = add_command(sub, "demo", cmd_demo, help_text)
    p.add_argument("-o", "--output", dest="out", default="out/demo", metavar="OUT_DIR")
    p.add_argument(
        "--codec-only", action="store_true", help="no servers: every rate in-process, bpp/PSNR"
    )
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: per CPU)")
