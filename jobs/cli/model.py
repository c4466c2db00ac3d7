"""Model commands of ``oscar``: bring the published OSCAR in, fit its entropy coders.

    oscar import-reference --sd21 DIR --checkpoint FILE --allow-pickle --out MODEL_DIR
                           [--dtype fp16|bf16|fp32] [--data IMAGES [--limit N]]
        SD-2.1 (diffusers layout) + the reference checkpoint -> a self-contained model
        directory (oscar_core/reference.py); with --data, then fit-entropy and fit-context.
    oscar fit-entropy --model MODEL_DIR --data IMAGES [--limit N]
        per-rate index pmfs from images, written into the model (pixels never change, bytes
        do; the model id changes with the pmfs, so streams of the old id are refused).
    oscar fit-context --model MODEL_DIR --data IMAGES [--limit N] [--cache FILE.npz]
        the context model of the indices (oscar_core/fitting.py) -> context.safetensors
        (pixels never change, bytes do; the model id changes, format-3 streams still decode).
    oscar take-rates --model MODEL_DIR --from SOURCE_DIR --rates 4[,5]
        those rates become SOURCE's exactly (hyper-encoder, pmf, t_r, context tables), the
        others stay MODEL's; both must share the autoencoder and the denoiser (a stage-1
        refinement and its base). The model id changes.

Errors (a missing file, a key or shape that does not fit, pickle not allowed) are one line
``oscar: error: <command>: <reason>`` and exit 2, before anything is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs.cli.common import add_command
from jobs.common.images import image_files

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def fit_entropy(model_dir: str | Path, data: list[str], limit: int | None = None) -> int:
    """Estimate every rate's pmf from images and rewrite the model's weights file."""
    import torch
    from PIL import Image

    from oscar_core import Codec, OscarModel
    from oscar_core.entropy import pmf_from_histogram

    files = image_files(data, limit)
    dtype = OscarModel.stored_dtype(model_dir)
    codec = Codec.from_pretrained(model_dir)
    old_id = codec.model_id.hex()
    t0 = time.perf_counter()
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{f}: not a readable image: {exc}") from exc
    counts = codec.index_counts(images)
    model = codec.model
    for rate, c in zip(model.ladder, counts, strict=True):
        model.set_pmf(rate.index, torch.from_numpy(pmf_from_histogram(c)))
        used = int((c > 0).sum())
        print(f"rate {rate.index}: {int(c.sum())} indices, {used}/{rate.K} codes used")
    model.config.notes = {**model.config.notes, "entropy_fit": {"images": len(files)}}
    model.save_pretrained(model_dir, dtype=dtype)
    new_id = model.model_id().hex()
    print(
        f"fitted the pmfs of {model_dir} on {len(files)} images in "
        f"{time.perf_counter() - t0:.1f} s: model id {old_id} -> {new_id}"
    )
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    import torch

    from oscar_core import OscarModel
    from oscar_core.reference import import_reference

    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise ValueError(f"{out}: a model directory is already there (--overwrite to replace)")
    t0 = time.perf_counter()
    model, report = import_reference(
        args.sd21,
        args.checkpoint,
        out,
        allow_pickle=args.allow_pickle,
        dtype=getattr(torch, DTYPES[args.dtype]),
    )
    for line in report.lines():
        print(line)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    model_id = OscarModel.from_pretrained(out).model_id().hex()
    print(
        f"wrote {out} ({size / 2**20:.1f} MiB, {args.dtype}) in {time.perf_counter() - t0:.1f} s:"
        f" model id {model_id}; entropy coder pmfs uniform (fit them: oscar fit-entropy)"
    )
    del model
    if args.data:
        fit_entropy(out, args.data, args.limit)
        return fit_context(out, args.data, args.limit)
    return 0


def fit_context(
    model_dir: str | Path, data: list[str], limit: int | None = None, cache: str | None = None
) -> int:
    """Fit the model's context model on images (``oscar_core.fitting``)."""
    from oscar_core.fitting import fit_context_model

    files = image_files(data, limit)
    fit = fit_context_model(model_dir, files, cache=cache, log=print)
    print(
        f"fitted the context model of {model_dir} on {fit.images} images in "
        f"{fit.seconds:.1f} s: model id {fit.old_id} -> {fit.new_id}"
    )
    return 0


def take_rates(model_dir: str | Path, source_dir: str | Path, rates_text: str) -> int:
    """Copy the rates listed in ``rates_text`` ("4" or "2,4") from the model in
    ``source_dir`` into the one in ``model_dir``."""
    from oscar_core import OscarModel

    model, source = OscarModel.from_pretrained(model_dir), OscarModel.from_pretrained(source_dir)
    old_id, had_context = model.model_id().hex(), model.context is not None
    rates = model.take_rates(source, [r for r in rates_text.split(",") if r.strip()])
    taken = {"rates": rates, "from": source.model_id().hex()}
    model.config.notes = {**model.config.notes, "took_rates": taken}
    model.save_pretrained(model_dir, dtype=OscarModel.stored_dtype(model_dir))
    print(f"rates {rates} of {model_dir} are now {source_dir}'s ({taken['from']}): "
          f"model id {old_id} -> {model.model_id().hex()}")  # fmt: skip
    if had_context and model.context is None:
        print(f"{source_dir} has no context model: fit it again (oscar fit-context)")
    return 0


def cmd_take_rates(args: argparse.Namespace) -> int:
    return take_rates(args.model, args.source, args.rates)


def cmd_fit_entropy(args: argparse.Namespace) -> int:
    return fit_entropy(args.model, args.data, args.limit)


def cmd_fit_context(args: argparse.Namespace) -> int:
    return fit_context(args.model, args.data, args.limit, args.cache)


def add_commands(sub: argparse._SubParsersAction) -> None:
    help_text = "import SD-2.1 + the reference OSCAR checkpoint as a model directory"
    p = sub.add_parser("import-reference", help=help_text, description=help_text)
    p.add_argument("--sd21", required=True, metavar="DIR", help="SD-2.1 in diffusers layout")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="reference checkpoint")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="the checkpoint is a pickle: read it (torch.load weights_only=True)",
    )
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="stored weights (fp16 halves the size)",
    )
    p.add_argument(
        "--data", nargs="+", default=None, metavar="IMAGES", help="then fit pmfs and context"
    )
    p.add_argument("--limit", type=int, default=None, help="first N images of --data")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model dir")
    p.set_defaults(fn=cmd_import_reference)

    help_text = "fit the entropy coder's pmfs from images"
    p = add_command(sub, "fit-entropy", cmd_fit_entropy, help_text)
    p.add_argument("--data", nargs="+", required=True, metavar="IMAGES")
    p.add_argument("--limit", type=int, default=None, help="first N images")

    help_text = "fit the context model of the indices from images"
    p = add_command(sub, "fit-context", cmd_fit_context, help_text)
    p.add_argument("--data", nargs="+", required=True, metavar="IMAGES")
    p.add_argument("--limit", type=int, default=None, help="first N images")
    p.add_argument("--cache", default=None, metavar="FILE.npz", help="index grids, reused")

    help_text = "make some rates another model's (a stage-1 refinement's best rates)"
    p = add_command(sub, "take-rates", cmd_take_rates, help_text)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE_DIR")
    p.add_argument("--rates", required=True, help="ladder indices, e.g. 0,1,2")
