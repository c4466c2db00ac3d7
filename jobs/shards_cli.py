"""The shard-job subcommands of ``oscar`` (registered by ``jobs/cli.py``).

    oscar encode-shards SRC --out DST [--rate R | --rates-file F] [--workers N] ...
    oscar decode-shards SRC.parquet... --out DST [--format png|jpg|webp] [--as-files]
    oscar status DST

This module only parses and prints; the work is ``pipeline.runner``, imported when a
command runs (so ``oscar --help`` never imports Ray or pyarrow). Exit status: 0 when every
shard finished (sample errors are data, not failures), 1 when a shard failed every retry or
no worker could start (one line naming the worker's exception), 2 for bad arguments or an
unusable input/output (one line ``oscar: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_FAILED_SHARDS = 1
EXIT_BAD_INPUT = 2


def _fail(command: str, reason: str) -> int:
    print(f"oscar: error: {command}: {reason}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="oscar: %(levelname)s: %(name)s: %(message)s",
    )


def _resources(args: argparse.Namespace) -> Any:
    from pipeline.contract import Resources

    return Resources(
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        address=args.address,
    )


def _guarded(command: str, run: Callable[[], int]) -> int:
    """Turn validation errors into one line and exit 2 (the traceback helps nobody)."""
    try:
        return run()
    except (ValueError, OSError) as exc:  # OSError: StorageError, missing model files
        return _fail(command, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except RuntimeError as exc:
        from pipeline.dispatch import WorkersFailedToStart  # imported by run() already

        if not isinstance(exc, WorkersFailedToStart):
            raise
        print(f"oscar: error: {command}: {exc}", file=sys.stderr)  # no shard ran
        return EXIT_FAILED_SHARDS
    except KeyboardInterrupt:
        print("oscar: interrupted; a re-run resumes from the shards already done", file=sys.stderr)
        return 130


def cmd_encode_shards(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)

    def run() -> int:
        from pipeline.contract import EncodeJob
        from pipeline.runner import run_encode

        job = EncodeJob(
            src=args.src,
            out=args.out,
            model_dir=args.model,
            rate=args.rate,
            rates_file=args.rates_file,
            batch_size=args.batch_size,
            max_retries=args.max_retries,
            overwrite=args.overwrite,
            limit=args.limit,
            max_pixels=args.max_pixels,
            resources=_resources(args),
            progress=not args.no_progress,
            precision=args.precision,
        )
        report = run_encode(job)
        sh, s = report["shards"], report["summary"]
        print(
            f"encode-shards: {sh['processed']} shards done now, {sh['done_before']} before, "
            f"{sh['failed']} failed, {sh['not_run']} not run (of {sh['total']})"
        )
        print(
            f"  images {s['images']} ({s['images_error']} errors), "
            f"{s['source_bytes']} -> {s['bitstream_bytes']} bytes (ratio {s['ratio']}), "
            f"mean {s['mean_bpp']} bpp, {s['images_per_s']} images/s"
        )
        print(f"  report: {args.out.rstrip('/')}/job_report.md")
        for name, attempts, error in report["failed"]:
            print(f"  FAILED {name} after {attempts} attempts: {error}", file=sys.stderr)
        return EXIT_FAILED_SHARDS if report["failed"] else 0

    return _guarded("encode-shards", run)


def cmd_decode_shards(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)

    def run() -> int:
        from pipeline.contract import DecodeJob
        from pipeline.runner import run_decode

        job = DecodeJob(
            parquets=args.inputs,
            out=args.out,
            model_dir=args.model,
            format=args.format,
            as_files=args.as_files,
            batch_size=args.batch_size,
            max_pixels=args.max_pixels,
            max_retries=args.max_retries,
            resources=_resources(args),
            progress=not args.no_progress,
            precision=args.precision,
        )
        report = run_decode(job)
        s = report["summary"]
        print(
            f"decode-shards: {s['parquets']} parquets, {s['images_decoded']} images decoded, "
            f"{s['rows_skipped_error']} error rows skipped, {s['failures']} rows failed, "
            f"{s['fallbacks']} written as png instead, {s['renamed']} images renamed, "
            f"{s['images_per_s']} images/s"
        )
        for name, key, why in report["row_failures"][:20]:
            print(f"  {name}: {key}: {why}", file=sys.stderr)
        if s["failures"] or s["fallbacks"] or s["renamed"] or s["rows_skipped_error"]:
            print(f"  every such row is listed in {args.out.rstrip('/')}/<name>.errors")
        print(f"  report: {args.out.rstrip('/')}/decode_report.md")
        return EXIT_FAILED_SHARDS if report["failed"] else 0

    return _guarded("decode-shards", run)


def cmd_status(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)

    def run() -> int:
        from pipeline.runner import collect_status

        status = collect_status(args.out)
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        t = status["totals"]
        print(
            f"{status['out']}: {len(status['done'])} done, {len(status['failed'])} failed, "
            f"{len(status['pending'])} pending (of {status['shards']} shards)"
        )
        print(
            f"  done: {t['images']} images ({t['images_error']} errors), "
            f"{t['source_bytes']} -> {t['bitstream_bytes']} bytes, ratio {t['ratio']}"
        )
        for name, error in status["failed"].items():
            print(f"  failed  {name}: {error}")
        for name in status["pending"][:20]:
            print(f"  pending {name}")
        if len(status["pending"]) > 20:
            print(f"  ... and {len(status['pending']) - 20} more pending")
        return 0

    return _guarded("status", run)


def _one_line_errors(p: argparse.ArgumentParser, command: str) -> None:
    """argparse prints the whole usage on a bad argument; we print one line, exit 2."""

    def error(message: str) -> NoReturn:
        p.exit(EXIT_BAD_INPUT, f"oscar: error: {command}: {message} (see --help)\n")

    p.error = error  # type: ignore[method-assign]


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="actors (default: one per GPU, else one per CPU)")
    p.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per actor (default 1 if the cluster has any)"
    )
    p.add_argument("--cpus-per-worker", type=int, help="CPUs (= torch threads) per actor")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS, else local)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast the heavy stages (faster where the CPU/GPU has bf16)",
    )
    p.add_argument("--max-retries", type=int, default=3, help="retries of a failed shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def add_shard_commands(
    sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]
) -> None:
    """Register the subcommands; ``add(name, fn, help)`` is cli.py's helper (adds --model)."""
    p = add("encode-shards", cmd_encode_shards, "compress WebDataset tar shards to Parquet")
    p.add_argument("src", metavar="SRC", help="shards: brace range, glob or .txt (local or s3)")
    p.add_argument("--out", required=True, metavar="DST", help="output dir or s3 prefix")
    p.add_argument("--rate", help="default rate: ladder index (0..7) or nominal bpp")
    p.add_argument("--rates-file", metavar="F", help="per-shard rates: JSON or 'pattern = value'")
    p.add_argument("--overwrite", action="store_true", help="redo shards already done")
    p.add_argument("--limit", type=int, help="run at most N pending shards, then stop")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="decompression-bomb limit")
    _add_cluster_args(p)
    _one_line_errors(p, "encode-shards")

    p = add("decode-shards", cmd_decode_shards, "decode shard Parquets back to images")
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
    _one_line_errors(p, "decode-shards")

    help_text = "done / failed / pending shards of an encode-shards output"
    p = sub.add_parser("status", help=help_text, description=help_text)
    p.add_argument("out", metavar="DST", help="the --out of encode-shards")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_status)
    _one_line_errors(p, "status")


# -- recompress: encode-shards + bytes before/after + quality (pipeline/recompress.py) -----


def cmd_recompress(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)

    def run() -> int:
        from pipeline.contract import EncodeJob
        from pipeline.recompress import run_recompress
        from pipeline.report import format_table, human_bytes

        job = EncodeJob(
            src=args.src,
            out=args.out,
            model_dir=args.model,
            rate=args.rate,
            rates_file=args.rates_file,
            batch_size=args.batch_size,
            max_retries=args.max_retries,
            overwrite=args.overwrite,
            limit=args.limit,
            max_pixels=args.max_pixels,
            resources=_resources(args),
            progress=not args.no_progress,
            precision=args.precision,
        )
        report = run_recompress(job, quality_sample=args.quality_sample)
        sh, t = report["encode"]["shards"], report["totals"]
        print(
            f"recompress: {sh['processed']} shards done now, {sh['done_before']} before, "
            f"{sh['failed']} failed, {sh['not_run']} not run (of {sh['total']})"
        )
        print(format_table(report))
        print(
            f"  saved {human_bytes(t['saved_bytes'])} of {human_bytes(t['tar_bytes'])} "
            f"(tar -> Parquet ratio {t['tar_to_parquet_ratio']}); quality on {t['quality_n']} "
            f"sampled images: PSNR {t['psnr']} dB, MS-SSIM {t['ms_ssim']}"
        )
        print(f"  report: {args.out.rstrip('/')}/recompress_report.md")
        for name, key, why in report["quality_failures"][:20]:
            print(f"  quality sample {name}/{key}: {why}", file=sys.stderr)
        for name, attempts, error in report["failed"]:
            print(f"  FAILED {name} after {attempts} attempts: {error}", file=sys.stderr)
        return EXIT_FAILED_SHARDS if report["failed"] else 0

    return _guarded("recompress", run)


def add_recompress_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``oscar recompress``: encode-shards' arguments plus ``--quality-sample N``."""
    p = add("recompress", cmd_recompress, "recompress a WebDataset: encode + size/quality report")
    p.add_argument("src", metavar="SRC", help="shards: brace range, glob or .txt (local or s3)")
    p.add_argument("--out", required=True, metavar="DST", help="output dir or s3 prefix")
    p.add_argument("--rate", help="default rate: ladder index (0..7) or nominal bpp")
    p.add_argument("--rates-file", metavar="F", help="per-shard rates: JSON or 'pattern = value'")
    p.add_argument(
        "--quality-sample",
        type=int,
        default=4,
        metavar="N",
        help="images per shard decoded and compared (PSNR, MS-SSIM); 0: none (default 4)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo shards already done")
    p.add_argument("--limit", type=int, help="run at most N pending shards, then stop")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="decompression-bomb limit")
    _add_cluster_args(p)
    _one_line_errors(p, "recompress")
