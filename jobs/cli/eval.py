"""``oscar eval`` (OSCAR vs classic codecs at matched bpp; docs/eval.md) and ``oscar
eval-autoencoder`` (the latent autoencoder's own round trip): configs for ``jobs.eval``."""

from __future__ import annotations

import argparse

from jobs.cli.common import add_command, config_from_args


def cmd_eval(args: argparse.Namespace) -> int:
    from jobs.eval.job import EvalConfig, run

    return run(config_from_args(EvalConfig, args))


def cmd_eval_autoencoder(args: argparse.Namespace) -> int:
    from jobs.eval.autoencoder import RoundTripConfig, run_round_trip

    return run_round_trip(config_from_args(RoundTripConfig, args))


def cmd_eval_stages(args: argparse.Namespace) -> int:
    from jobs.eval.stages import StagesConfig, run_stages

    return run_stages(config_from_args(StagesConfig, args))


def add_commands(sub: argparse._SubParsersAction) -> None:
    help_text = "OSCAR vs JPEG/WebP/AVIF/JXL/HEIC at matched bpp, with metrics"
    p = add_command(sub, "eval", cmd_eval, help_text)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory")
    p.add_argument("--rates", default=None, help="ladder indices or bpp, e.g. 0,3,7 (all)")
    p.add_argument("--codecs", default=None, help="e.g. jpeg,avif (all that work here)")
    p.add_argument("--metrics", default=None, help="psnr,ms-ssim,ssimulacra2,flip,cvvdp,lpips")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--lpips-weights", default=None, metavar="PATH", help="local AlexNet/LPIPS")
    p.add_argument(
        "--downscales",
        default=None,
        help="smaller variants tried (default 2,4,8,16; see oscar eval docs)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    help_text = "the latent autoencoder's round trip alone: PSNR, Cb/Cr error, saturation"
    p = add_command(sub, "eval-autoencoder", cmd_eval_autoencoder, help_text)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or directories")
    p.add_argument(
        "--json", dest="json_out", default=None, metavar="OUT.json", help="also write the rows"
    )

    help_text = "where quality is lost: autoencoder, coded latent, codec, perfect-latent denoiser"
    p = add_command(sub, "eval-stages", cmd_eval_stages, help_text)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or directories")
    p.add_argument("--rates", default=None, help="ladder indices or bpp, e.g. 0,3,7 (all)")
    p.add_argument(
        "--json", dest="json_out", default=None, metavar="OUT.json", help="also write the rows"
    )
