"""The codec verbs of ``oscar``: files in, files out, one process (``oscar_core.Codec``).

    oscar compress IN... -o OUT_DIR --rate R     -> OUT_DIR/<stem>.oscar
    oscar compress IN... -o OUT_DIR --target psnr>=30
                                                 -> per image, the lowest rate meeting it
    oscar decompress IN.oscar... -o OUT_DIR      -> OUT_DIR/<stem>.png
    oscar info FILE                              -> JSON on stdout
    oscar rates [--json]                         -> the rate ladder

A bad input file is one ``oscar: error: <file>: <reason>`` line; the others are still done
and the exit status is 2. Outputs are never overwritten silently: two inputs writing one
file, or an existing file without ``--overwrite``, stop the command with exit 2 before any
work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.cli.common import (
    DEFAULT_TILE,
    EXIT_BAD_INPUT,
    add_command,
    add_precision,
    add_rate_or_target,
    add_tile,
    print_error,
)


def _load_codec(args: argparse.Namespace):
    import torch

    from oscar_core import Codec

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return Codec.from_pretrained(
        args.model,
        batch_size=getattr(args, "batch_size", 4),
        precision=getattr(args, "precision", "fp32"),  # ValueError (exit 2) without bf16
        tile=getattr(args, "tile", DEFAULT_TILE),  # ValueError (exit 2): not 0 or 64k >= 128
        **({"max_pixels": args.max_pixels} if getattr(args, "max_pixels", None) else {}),
    )


def _targets(args: argparse.Namespace, suffix: str) -> list[Path] | None:
    """OUT_DIR/<stem><suffix> for each input, checked before any work: None (after one
    line per problem) when two inputs would write one file (``a/x.png b/x.jpg``) or a file
    exists and ``--overwrite`` was not given. Never overwrite silently."""
    targets = [Path(args.output) / (Path(name).stem + suffix) for name in args.inputs]
    first: dict[Path, str] = {}
    problems = 0
    for name, target in zip(args.inputs, targets, strict=True):
        if target in first:
            print_error(f"{first[target]}, {name}", f"both would write {target}; rename one")
            problems += 1
        elif target.exists() and not args.overwrite:
            print_error(str(target), "exists (pass --overwrite to replace it)")
            problems += 1
        first.setdefault(target, name)
    if problems:
        return None
    Path(args.output).mkdir(parents=True, exist_ok=True)
    return targets


def cmd_compress(args: argparse.Namespace) -> int:
    from PIL import Image

    from oscar_core.images import pixel_limit_error, to_rgb_array
    from oscar_core.target import Target

    # ValueError (exit 2 in main) before any work
    target = Target.parse(args.target) if args.target is not None else None
    targets = _targets(args, ".oscar")
    if targets is None:
        return EXIT_BAD_INPUT
    codec = _load_codec(args)
    rate = codec.ladder.resolve(args.rate) if target is None else None
    # --max-pixels is ours (checked from the header, before decoding); lift Pillow's own
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < codec.max_pixels:
        Image.MAX_IMAGE_PIXELS = codec.max_pixels
    failed, names, arrays = 0, [], []
    for name, path in zip(args.inputs, targets, strict=True):
        try:
            with Image.open(name) as img:
                if error := pixel_limit_error(*img.size, codec.max_pixels):
                    raise ValueError(error)
                img.load()
                arrays.append(to_rgb_array(img))
            names.append((name, path))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            print_error(name, f"cannot read image: {exc}")
            failed += 1
    if target is not None:
        _write_targeted(codec, target, names, arrays)
    else:
        streams = codec.compress(arrays, rate.index) if arrays else []
        for (name, path), array, stream in zip(names, arrays, streams, strict=True):
            path.write_bytes(stream)
            print(f"{name} -> {path} ({len(stream)} bytes, {_bpp(stream, array):.4f} bpp)")
    return EXIT_BAD_INPUT if failed else 0


def _bpp(stream: bytes, array) -> float:
    h, w = array.shape[:2]
    return 8 * len(stream) / (h * w)


def _write_targeted(codec, target, names: list, arrays: list) -> None:
    """Each image at the lowest ladder rate whose decoded image meets ``target``; one line
    per image, then the summary (chosen rates, met, trials, bytes against one rate for all)."""
    from oscar_core.target import TargetSummary, compress_to_target, outcome_of

    results = compress_to_target(codec, arrays, target) if arrays else []
    outcomes = []
    for (name, path), array, res in zip(names, arrays, results, strict=True):
        path.write_bytes(res.stream)
        verdict = "met" if res.met else "MISSED (top rate)"
        print(
            f"{name} -> {path} ({len(res.stream)} bytes, {_bpp(res.stream, array):.4f} bpp, "
            f"rate {res.rate.index}, {target.metric} {res.achieved:.4g}: {verdict}, "
            f"{res.trials} trials)"
        )
        outcomes.append(outcome_of(res, array.shape[0] * array.shape[1]))
    if outcomes:
        print(TargetSummary.of(target, outcomes).line())


def cmd_decompress(args: argparse.Namespace) -> int:
    from PIL import Image

    from oscar_core import BitstreamError

    targets = _targets(args, ".png")
    if targets is None:
        return EXIT_BAD_INPUT
    codec = _load_codec(args)
    failed, names, parsed = 0, [], []
    for name, target in zip(args.inputs, targets, strict=True):
        try:
            parsed.append(codec.parse(Path(name).read_bytes()))
            names.append((name, target))
        except (OSError, BitstreamError) as exc:
            print_error(name, f"cannot decode: {exc}")
            failed += 1
    images = codec.decode_parsed(parsed) if parsed else []
    for (name, target), image in zip(names, images, strict=True):
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
        print_error(args.file, f"cannot read bitstream: {exc}")
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "compress", cmd_compress, "compress images to .oscar bitstreams")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files (png, jpg, webp, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT_DIR files")
    add_rate_or_target(p, required=True, rate_help="ladder index (0..7) or nominal bpp (0.0313)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (64 MP)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_precision(p)
    add_tile(p)

    p = add_command(sub, "decompress", cmd_decompress, "decode .oscar bitstreams to PNG")
    p.add_argument("inputs", nargs="+", metavar="IN.oscar")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT_DIR files")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse streams declaring more (64 MP)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_precision(p)
    add_tile(p)

    p = add_command(sub, "info", cmd_info, "describe a bitstream as JSON")
    p.add_argument("file", metavar="FILE")

    p = add_command(sub, "rates", cmd_rates, "print the rate ladder")
    p.add_argument("--json", action="store_true")
