"""What every ``oscar`` verb shares: the exit codes, the one-line error, the ``--model`` and
``--precision`` options, one-line argparse errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

EXIT_FAILED_SHARDS = 1  # a shard failed every retry, or no worker could start
EXIT_BAD_INPUT = 2  # a bad argument or input: one ``oscar: error: ...`` line each

Handler = Callable[[argparse.Namespace], int]
Config = TypeVar("Config")


def print_error(subject: str, reason: str) -> None:
    print(f"oscar: error: {subject}: {reason}", file=sys.stderr)


def fail(subject: str, reason: str) -> int:
    """The error line, and the exit status that goes with it."""
    print_error(subject, reason)
    return EXIT_BAD_INPUT


def config_from_args(cls: type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """A job's typed config from the parsed arguments: each field of ``cls`` takes the
    argument of the same name (its ``dest``); ``given`` sets the fields named otherwise."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names} | given)


def add_command(
    sub: argparse._SubParsersAction, name: str, fn: Handler, help_text: str
) -> argparse.ArgumentParser:
    """A verb that loads a model: its parser, with ``--model`` and ``fn`` as the handler."""
    from oscar_core import DEFAULT_MODEL_DIR

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory")
    p.set_defaults(fn=fn)
    return p


def add_precision(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--precision fp32|bf16: bf16 autocast of the heavy stages (oscar_core/precision.py)."""
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help=help_text
        or "fp32 (default, deterministic) or bf16 (faster on CPUs/GPUs with bf16; "
        "pixels within ~1 level of fp32 on average)",
    )


def add_rate_or_target(p: argparse.ArgumentParser, *, required: bool, rate_help: str) -> None:
    """--rate R | --target METRIC>=VALUE (``oscar_core.target``), one or the other."""
    how = p.add_mutually_exclusive_group(required=required)
    how.add_argument("--rate", help=rate_help)
    how.add_argument(
        "--target",
        metavar="METRIC>=VALUE",
        help="instead of a rate: per image the lowest rate whose decoded image meets it "
        "(METRIC: psnr, ms-ssim or ssimulacra2; e.g. psnr>=21)",
    )


# Defaults the parsers show without importing the libraries (torch, Ray) at parse time; a
# test checks them against oscar_core.tiling.DEFAULT_TILE, contract.DEFAULT_PIXEL_BUDGET.
DEFAULT_TILE = 1024
DEFAULT_PIXEL_BUDGET = 256_000_000


def add_tile(p: argparse.ArgumentParser) -> None:
    """--tile PIXELS: tiled latent coding of large images (``oscar_core/tiling.py``)."""
    p.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        metavar="PIXELS",
        help=f"images over PIXELS**2 are coded in overlapping tiles of this side, so memory "
        f"stays flat in image size (a multiple of 64, >= 128; 0: never; default {DEFAULT_TILE})",
    )


def one_line_errors(p: argparse.ArgumentParser, command: str) -> None:
    """argparse prints the whole usage on a bad argument; we print one line, exit 2."""

    def error(message: str) -> NoReturn:
        p.exit(EXIT_BAD_INPUT, f"oscar: error: {command}: {message} (see --help)\n")

    p.error = error  # type: ignore[method-assign]
