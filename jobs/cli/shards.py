"""The shard-job verbs of ``oscar``.

    oscar encode-shards SRC --out DST [--rate R | --target T | --rates-file F] [--workers N] ...
    oscar decode-shards SRC.parquet... --out DST [--format png|jpg|webp] [--as-files]
    oscar status DST
    oscar recompress SRC --out DST [--quality-sample N] ...   (encode-shards + bytes/quality)

This module only parses and prints; the work is ``pipeline.runner`` (and
``pipeline.recompress``), imported when a command runs (so ``oscar --help`` never imports
Ray or pyarrow). Exit status: 0 when every shard finished (sample errors are data, not
failures), 1 when a shard failed every retry or no worker could start (one line naming the
worker's exception), 2 for bad arguments or an unusable input/output (one line
``oscar: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobs.cli.common import (
    DEFAULT_PIXEL_BUDGET,
    EXIT_FAILED_SHARDS,
    add_command,
    add_precision,
    add_rate_or_target,
    add_tile,
    config_from_args,
    fail,
    one_line_errors,
)

if TYPE_CHECKING:  # pipeline is imported when a command runs
    from pipeline.report import EncodeShards


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="oscar: %(levelname)s: %(name)s: %(message)s",
    )


def shard_job(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """A ``pipeline.contract`` job (``EncodeJob``, ``DecodeJob``) from the arguments of the
    same names, plus what every shard job takes: the model, the Ray resources, progress."""
    from pipeline.contract import Resources

    resources = config_from_args(Resources, args)
    progress = not args.no_progress
    return config_from_args(
        cls, args, model_dir=args.model, resources=resources, progress=progress, **given
    )


def encode_job(args: argparse.Namespace) -> Any:
    """The ``EncodeJob`` of encode-shards and recompress (the same arguments)."""
    from pipeline.contract import EncodeJob

    return shard_job(EncodeJob, args)


def _guarded(command: str, verbose: bool, run: Callable[[], int]) -> int:
    """Run a shard job; validation errors become one line and exit 2 (the traceback helps
    nobody), workers that cannot start exit 1, Ctrl-C says how to resume."""
    _setup_logging(verbose)
    try:
        return run()
    except (ValueError, OSError) as exc:  # OSError: StorageError, missing model files
        return fail(command, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except RuntimeError as exc:
        from pipeline.dispatch import WorkersFailedToStart  # imported by run() already

        if not isinstance(exc, WorkersFailedToStart):
            raise
        print(f"oscar: error: {command}: {exc}", file=sys.stderr)  # no shard ran
        return EXIT_FAILED_SHARDS
    except KeyboardInterrupt:
        print("oscar: interrupted; a re-run resumes from the shards already done", file=sys.stderr)
        return 130


def _print_failed(failed: list) -> int:
    """The shards that failed every retry, one stderr line each; the exit status."""
    for name, attempts, error in failed:
        print(f"  FAILED {name} after {attempts} attempts: {error}", file=sys.stderr)
    return EXIT_FAILED_SHARDS if failed else 0


def _print_shards(command: str, sh: EncodeShards) -> None:
    print(
        f"{command}: {sh.processed} shards done now, {sh.done_before} before, "
        f"{sh.failed} failed, {sh.not_run} not run (of {sh.total})"
    )


def cmd_encode_shards(args: argparse.Namespace) -> int:
    def run() -> int:
        from pipeline.runner import run_encode

        report = run_encode(encode_job(args))
        _print_shards("encode-shards", report.shards)
        s = report.summary
        print(
            f"  images {s.images} ({s.images_error} errors), "
            f"{s.source_bytes} -> {s.bitstream_bytes} bytes (ratio {s.ratio}), "
            f"mean {s.mean_bpp} bpp, {s.images_per_s} images/s"
        )
        for t in report.targets:
            print(f"  {t.line()}")
        print(f"  report: {args.out.rstrip('/')}/job_report.md")
        return _print_failed(report.failed)

    return _guarded("encode-shards", args.verbose, run)


def cmd_recompress(args: argparse.Namespace) -> int:
    def run() -> int:
        from pipeline.recompress import run_recompress
        from pipeline.recompress_report import format_table, human_bytes
        from pipeline.report import EncodeShards

        report = run_recompress(encode_job(args), quality_sample=args.quality_sample)
        _print_shards("recompress", EncodeShards(**report["encode"]["shards"]))
        t = report["totals"]
        print(format_table(report))
        print(
            f"  saved {human_bytes(t['saved_bytes'])} of {human_bytes(t['tar_bytes'])} "
            f"(tar -> Parquet ratio {t['tar_to_parquet_ratio']}); quality on {t['quality_n']} "
            f"sampled images: PSNR {t['psnr']} dB, MS-SSIM {t['ms_ssim']}"
        )
        print(f"  report: {args.out.rstrip('/')}/recompress_report.md")
        for name, key, why in report["quality_failures"][:20]:
            print(f"  quality sample {name}/{key}: {why}", file=sys.stderr)
        return _print_failed(report["failed"])

    return _guarded("recompress", args.verbose, run)


def cmd_decode_shards(args: argparse.Namespace) -> int:
    def run() -> int:
        from pipeline.contract import DecodeJob
        from pipeline.runner import run_decode

        report = run_decode(shard_job(DecodeJob, args, parquets=args.inputs))
        s = report.summary
        print(
            f"decode-shards: {s.parquets} parquets, {s.images_decoded} images decoded, "
            f"{s.rows_skipped_error} error rows skipped, {s.failures} rows failed, "
            f"{s.fallbacks} written as png instead, {s.renamed} images renamed, "
            f"{s.images_per_s} images/s"
        )
        for name, key, why in report.row_failures[:20]:
            print(f"  {name}: {key}: {why}", file=sys.stderr)
        if s.failures or s.fallbacks or s.renamed or s.rows_skipped_error:
            print(f"  every such row is listed in {args.out.rstrip('/')}/<name>.errors")
        print(f"  report: {args.out.rstrip('/')}/decode_report.md")
        return EXIT_FAILED_SHARDS if report.failed else 0

    return _guarded("decode-shards", args.verbose, run)


def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        from pipeline.outputs import collect_status

        status = collect_status(args.out)
        if args.json:
            print(json.dumps(status.to_dict(), indent=2))
            return 0
        t = status.totals
        print(
            f"{status.out}: {len(status.done)} done, {len(status.failed)} failed, "
            f"{len(status.pending)} pending (of {status.shards} shards)"
        )
        print(
            f"  done: {t.images} images ({t.images_error} errors), "
            f"{t.source_bytes} -> {t.bitstream_bytes} bytes, ratio {t.ratio}"
        )
        for name, error in status.failed.items():
            print(f"  failed  {name}: {error}")
        for name in status.pending[:20]:
            print(f"  pending {name}")
        if len(status.pending) > 20:
            print(f"  ... and {len(status.pending) - 20} more pending")
        return 0

    return _guarded("status", args.verbose, run)


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="actors (default: one per GPU, else one per CPU)")
    p.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per actor (default 1 if the cluster has any)"
    )
    p.add_argument("--cpus-per-worker", type=int, help="CPUs (= torch threads) per actor")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS, else local)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call")
    add_precision(p, "bf16: autocast the heavy stages (faster where the CPU/GPU has bf16)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a failed shard")
    add_tile(p)
    p.add_argument(
        "--pixel-budget",
        type=int,
        default=DEFAULT_PIXEL_BUDGET,
        metavar="PIXELS",
        help="decoded pixels an actor holds at a time (default 256 MP: pipeline/budget.py)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def _add_encode_args(p: argparse.ArgumentParser) -> None:
    """What encode-shards and recompress both take (``encode_job`` reads them)."""
    p.add_argument("src", metavar="SRC", help="shards: brace range, glob or .txt (local or s3)")
    p.add_argument("--out", required=True, metavar="DST", help="output dir or s3 prefix")
    rate_help = "default rate: ladder index (0..7) or nominal bpp"
    add_rate_or_target(p, required=False, rate_help=rate_help)
    p.add_argument(
        "--rates-file",
        metavar="F",
        help="per-shard rates or targets: JSON or 'pattern = value'",
    )
    p.add_argument("--overwrite", action="store_true", help="redo shards already done")
    p.add_argument("--limit", type=int, help="run at most N pending shards, then stop")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="decompression-bomb limit")
    _add_cluster_args(p)


def add_commands(sub: argparse._SubParsersAction) -> None:
    help_text = "compress WebDataset tar shards to Parquet"
    p = add_command(sub, "encode-shards", cmd_encode_shards, help_text)
    _add_encode_args(p)
    one_line_errors(p, "encode-shards")

    p = add_command(sub, "decode-shards", cmd_decode_shards, "decode shard Parquets back to images")
    p.add_argument("inputs", nargs="+", metavar="SRC.parquet", help="Parquet files or patterns")
    p.add_argument("--out", required=True, metavar="DST", help="output dir or s3 prefix")
    p.add_argument("--format", choices=["png", "jpg", "webp"], default="png")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--as-shards", action="store_true", help="WebDataset tars (default)")
    mode.add_argument("--as-files", action="store_true", help="one file per image and field")
    p.add_argument(
        "--max-pixels", type=int, default=64_000_000, help="refuse streams declaring more"
    )
    _add_cluster_args(p)
    one_line_errors(p, "decode-shards")

    help_text = "done / failed / pending shards of an encode-shards output"
    p = sub.add_parser("status", help=help_text, description=help_text)
    p.add_argument("out", metavar="DST", help="the --out of encode-shards")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_status)
    one_line_errors(p, "status")

    help_text = "recompress a WebDataset: encode + size/quality report"
    p = add_command(sub, "recompress", cmd_recompress, help_text)
    _add_encode_args(p)
    p.add_argument(
        "--quality-sample",
        type=int,
        default=4,
        metavar="N",
        help="images per shard decoded and compared (PSNR, MS-SSIM); 0: none (default 4)",
    )
    one_line_errors(p, "recompress")
