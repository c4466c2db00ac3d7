"""The ``oscar`` command: parse, validate, call ``oscar_core``; one line per bad input.

    oscar compress IN... -o OUT_DIR --rate R     -> OUT_DIR/<stem>.oscar
    oscar decompress IN.oscar... -o OUT_DIR      -> OUT_DIR/<stem>.png
    (both: --precision fp32|bf16, bf16 autocast of the heavy stages; oscar_core/precision.py)
    oscar info FILE                              -> JSON on stdout
    oscar rates [--json]                         -> the rate ladder
    oscar import-reference / fit-entropy / fit-context -> jobs/model_cli.py
    oscar demo                                   -> the embedded default (see jobs/demo.py)

Exit status: 0 when every input succeeded, 2 when any input was bad (the others are still
processed; each failure is one line ``oscar: error: <input>: <reason>`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _error(subject: str, reason: str) -> None:
    print(f"oscar: error: {subject}: {reason}", file=sys.stderr)


def _load_codec(args: argparse.Namespace):
    import torch

    from oscar_core import Codec

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return Codec.from_pretrained(
        args.model,
        batch_size=getattr(args, "batch_size", 4),
        precision=getattr(args, "precision", "fp32"),  # ValueError (exit 2) without bf16
        **({"max_pixels": args.max_pixels} if getattr(args, "max_pixels", None) else {}),
    )


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision fp32|bf16: bf16 autocast of the heavy stages (oscar_core/precision.py)."""
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32 (default, deterministic) or bf16 (faster on CPUs/GPUs with bf16; "
        "pixels within ~1 level of fp32 on average)",
    )


def _output_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_compress(args: argparse.Namespace) -> int:
    from PIL import Image

    from oscar_core.images import to_rgb_array

    codec = _load_codec(args)
    rate = codec.ladder.resolve(args.rate)  # ValueError -> exit 2 in main
    out_dir = _output_dir(args.output)
    failed, names, arrays = 0, [], []
    for name in args.inputs:
        try:
            with Image.open(name) as img:
                img.load()
                arrays.append(to_rgb_array(img))
            names.append(name)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            _error(name, f"cannot read image: {exc}")
            failed += 1
    streams = codec.compress(arrays, rate.index) if arrays else []
    for name, array, stream in zip(names, arrays, streams, strict=True):
        target = out_dir / (Path(name).stem + ".oscar")
        target.write_bytes(stream)
        h, w = array.shape[:2]
        print(f"{name} -> {target} ({len(stream)} bytes, {8 * len(stream) / (h * w):.4f} bpp)")
    return EXIT_BAD_INPUT if failed else 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from PIL import Image

    from oscar_core import BitstreamError

    codec = _load_codec(args)
    out_dir = _output_dir(args.output)
    failed, names, parsed = 0, [], []
    for name in args.inputs:
        try:
            parsed.append(codec.parse(Path(name).read_bytes()))
            names.append(name)
        except (OSError, BitstreamError) as exc:
            _error(name, f"cannot decode: {exc}")
            failed += 1
    images = codec.decode_parsed(parsed) if parsed else []
    for name, image in zip(names, images, strict=True):
        target = out_dir / (Path(name).stem + ".png")
        Image.fromarray(image).save(target)
        print(f"{name} -> {target} ({image.shape[1]}x{image.shape[0]})")
    return EXIT_BAD_INPUT if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    from oscar_core import BitstreamError, bitstream
    from oscar_core.images import padded_size

    codec = _load_codec(args)
    try:
        data = Path(args.file).read_bytes()
        # the CRC is seeded with the model id (format 3: the id without the context model)
        header, payload = bitstream.unpack(data, codec.model_id, codec.base_model_id)
    except (OSError, BitstreamError) as exc:
        _error(args.file, f"cannot read bitstream: {exc}")
        return EXIT_BAD_INPUT
    on_ladder = header.rate_index < len(codec.ladder)
    rate = codec.ladder[header.rate_index] if on_ladder else None
    latent_shape = None
    if rate is not None:  # derived from (H, W) and the rate's padding rule, as the decoder does
        ph, pw = padded_size(header.height, header.width, codec.model.pad_multiple(rate.index))
        latent_shape = [4, ph // 8, pw // 8]
    info = {
        "file": args.file,
        "format_version": header.version,
        "bytes": len(data),
        "payload_bytes": len(payload),
        "width": header.width,
        "height": header.height,
        "latent_shape": latent_shape,
        "rate_index": header.rate_index,
        "nominal_bpp": round(rate.nominal_bpp, 6) if rate else None,
        "measured_bpp": round(8 * len(data) / (header.width * header.height), 6),
        "pseudo_timestep": rate.t if rate else None,
        "model_id": header.model_id.hex(),  # verified: the CRC is seeded with it
        # the entropy coder's pmf for this rate: "fitted" from images, or still "uniform"
        # (an imported reference model before `oscar fit-entropy`): bytes, never pixels
        "pmf": ("fitted" if codec.model.pmf_fitted(rate.index) else "uniform") if rate else None,
        # which probability model coded the payload: uniform, static (the pmf) or context
        "probability_model": header.probability_model.name.lower(),
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_rates(args: argparse.Namespace) -> int:
    from oscar_core import OscarModel

    ladder = OscarModel.config_from_pretrained(args.model).rate_ladder()
    rows = [r.to_dict() for r in ladder]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'index':>5} {'bpp':>8} {'ss':>4} {'K':>6} {'t':>5}")
    for r in rows:
        print(f"{r['index']:>5} {r['nominal_bpp']:>8.5f} {r['ss']:>4} {r['K']:>6} {r['t']:>5}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import run_demo

    return run_demo(
        model=args.model, out=args.output, codec_only=args.codec_only, workers=args.workers
    )


# -- eval: OSCAR vs classic codecs at matched bpp (jobs/eval.py; heavy imports lazily) ----
def cmd_eval(args: argparse.Namespace) -> int:
    from jobs.eval import run_eval

    return run_eval(
        args.images,
        model=args.model,
        out=args.out,
        rates=args.rates,
        codecs=args.codecs,
        metrics=args.metrics,
        limit=args.limit,
        lpips_weights=args.lpips_weights,
        downscales=args.downscales,
        threads=args.threads,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from jobs.train import main_train

    return main_train(
        args.config,
        nproc=args.nproc,
        data=args.data,
        out=args.out,
        device=args.device,
        threads=args.threads,
        base=args.base,
        sd21_dir=args.sd21,
    )


def build_parser() -> argparse.ArgumentParser:
    from oscar_core import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(prog="oscar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory")
        p.set_defaults(fn=fn)
        return p

    p = add("compress", cmd_compress, "compress images to .oscar bitstreams")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files (png, jpg, webp, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--rate", required=True, help="ladder index (0..7) or nominal bpp (0.0313)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_precision(p)

    p = add("decompress", cmd_decompress, "decode .oscar bitstreams to PNG")
    p.add_argument("inputs", nargs="+", metavar="IN.oscar")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse streams declaring more (64 MP)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_precision(p)

    p = add("info", cmd_info, "describe a bitstream as JSON")
    p.add_argument("file", metavar="FILE")

    p = add("rates", cmd_rates, "print the rate ladder")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="train a model (stages 0, 1, fit, 2; resumable)")
    p.add_argument("--config", default=None, help="training config JSON (jobs/configs/)")
    p.add_argument(
        "--data", default=None, help="image directory, or shards: s3://b/p/{000..009}.tar, glob"
    )
    p.add_argument("--out", default=None, help="run directory (re-run to resume)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--base", default=None, help="oscar-tiny, oscar-sd21 or a model directory")
    p.add_argument("--sd21", default=None, metavar="DIR", help="SD-2.1 dir for base oscar-sd21")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--nproc", type=int, default=None, help="processes (one per GPU with --device cuda)"
    )
    p.set_defaults(fn=cmd_train)

    # -- eval (handler cmd_eval above; see docs/eval.md)
    p = add("eval", cmd_eval, "OSCAR vs JPEG/WebP/AVIF/JXL/HEIC at matched bpp, with metrics")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory")
    p.add_argument("--rates", default=None, help="ladder indices or bpp, e.g. 0,3,7 (all)")
    p.add_argument("--codecs", default=None, help="e.g. jpeg,avif (all that work here)")
    p.add_argument("--metrics", default=None, help="psnr,ms-ssim,ssimulacra2,flip,cvvdp,lpips")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--lpips-weights", default=None, metavar="PATH", help="local AlexNet/LPIPS")
    p.add_argument("--downscales", default=None, help="variants when out of reach (2,4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    # -- bench: benchmarks -> bench.json + bench.md (jobs/bench.py, imported when it runs) ---
    def cmd_bench(args: argparse.Namespace) -> int:
        from jobs.bench import main_bench

        return main_bench(args)

    p = add("bench", cmd_bench, "benchmark the codec and the pipeline (bench.json + bench.md)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 image at 256 px, 1 rate")
    p.add_argument("--out", default="docs/benchmarks", metavar="DIR")
    p.add_argument("--images", default=None, metavar="DIR", help="default: jobs/samples")
    p.add_argument("--sections", default=None, help="e.g. 1,2,3,7 (default: all, 1..8)")
    p.add_argument("--rates", default=None, help="ladder indices, e.g. 0,3,7 (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--precision",
        default=None,
        metavar="P[,P]",
        help="sections 2 and 3: fp32,bf16 side by side (default: both where the CPU has bf16)",
    )
    # -- end bench

    p = add("demo", cmd_demo, "the shard pipeline end to end on the bundled samples")
    p.add_argument("-o", "--output", default="out/demo", metavar="OUT_DIR")
    p.add_argument(
        "--codec-only", action="store_true", help="no servers: every rate in-process, bpp/PSNR"
    )
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: per CPU)")

    # -- shard jobs: encode-shards, decode-shards, status (handlers in jobs/shards_cli.py,
    #    which imports Ray/pyarrow only when a command runs)
    from jobs.shards_cli import add_shard_commands

    add_shard_commands(sub, add)

    # -- model commands: import-reference, fit-entropy, fit-context (jobs/model_cli.py)
    from jobs.model_cli import add_model_commands

    add_model_commands(sub, add)

    # -- recompress: encode-shards + bytes before/after + quality (jobs/shards_cli.py)
    from jobs.shards_cli import add_recompress_command

    add_recompress_command(add)
    # -- end recompress
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        _error(args.command, str(exc))
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
