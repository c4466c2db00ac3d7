"""``oscar train``: a ``TrainConfig`` from the JSON file and the flags, then ``jobs.train``."""

from __future__ import annotations

import argparse

# The TrainConfig fields the flags set (each flag's dest is the field's name)
TRAIN_FLAGS = ("data", "out", "device", "threads", "base", "sd21_dir")


def cmd_train(args: argparse.Namespace) -> int:
    from jobs.train.config import TrainConfig
    from jobs.train.job import run

    # flags override the file's fields of the same name (None: not given)
    flags = {name: getattr(args, name) for name in TRAIN_FLAGS}
    config = TrainConfig.from_json(args.config, **flags)
    return run(config, nproc=args.nproc)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (stages 0, 1, fit, 2; resumable)")
    p.add_argument("--config", default=None, help="training config JSON (jobs/train/configs/)")
    p.add_argument(
        "--data", default=None, help="image directory, or shards: s3://b/p/{000..009}.tar, glob"
    )
    p.add_argument("--out", default=None, help="run directory (re-run to resume)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--base", default=None, help="oscar-tiny, oscar-sd21 or a model directory")
    p.add_argument(
        "--sd21",
        dest="sd21_dir",
        default=None,
        metavar="DIR",
        help="SD-2.1 dir for base oscar-sd21",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--nproc", type=int, default=None, help="processes (one per GPU with --device cuda)"
    )
    p.set_defaults(fn=cmd_train)
