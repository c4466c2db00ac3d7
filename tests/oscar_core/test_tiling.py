"""Tiled latent coding: the grid, the blend, image-wide GroupNorm statistics, and the codec's
tiled encode and decode (bounded stage inputs, determinism, seam quality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from oscar_core import DEFAULT_MODEL_DIR, Codec
from oscar_core.images import pad_reflect, padded_index
from oscar_core.metrics import psnr
from oscar_core.tiling import (
    DEFAULT_TILE,
    GroupNormStats,
    axis_tiles,
    axis_weights,
    check_tile,
    cropped_map,
    tile_grid,
    tiled_decode_indices,
    tiled_encode_indices,
    tiled_map,
)
from tests.conftest import smooth_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("n,t,overlap", [(64, 16, 4), (70, 16, 4), (17, 16, 4), (16, 16, 4),
                                         (9, 16, 4), (100, 32, 0), (33, 32, 8)])  # fmt: skip
def test_axis_tiles_cover_the_axis_and_weights_sum_to_one(n, t, overlap):
    tiles = axis_tiles(n, t, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == n
    assert all(end - start == min(t, n) for start, end in tiles)
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(tiles, tiles[1:], strict=False))
    for scale in (1, 8):
        total = torch.zeros(n * scale)
        for (start, _), w in zip(tiles, axis_weights(tiles, overlap, scale), strict=True):
            assert (w > 0).all()
            total[start * scale : start * scale + len(w)] += w
        torch.testing.assert_close(total, torch.ones(n * scale))


def test_tile_grid_rule():
    assert tile_grid(64, 96, 0) is None  # off
    assert tile_grid(128, 128, 1024) is None  # 1024x1024 pixels: one tile's worth
    assert tile_grid(64, 96, 384).count == 6  # Kodak at 384 px: 2 x 3 tiles of 48 cells
    grid = tile_grid(40, 300, 256)  # a panorama: one row, the long side tiled
    assert grid.rows == ((0, 32), (8, 40)) and len(grid.cols) == 11 and grid.overlap == 4
    assert grid.cols[-2:] == ((252, 284), (268, 300))  # the last one shifted to end at 300
    assert tile_grid(64, 96, 256, factor=2).rows == ((0, 64),)  # the denoiser's: 512 px


@pytest.mark.parametrize("bad", [-64, 64, 100, 200, True, 512.0, "512"])
def test_bad_tile_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="Invalid tile"):
        check_tile(bad)
    with pytest.raises(ValueError, match="Invalid tile"):
        Codec.from_config("oscar-tiny", tile=bad)
    assert check_tile(0) == 0 and check_tile(192) == 192


# 16-cell tiles, overlap 2. 37 x 53: the last tiles shifted to the edge share more than the
# overlap; 31 x 31: tiles (0,16) (14,30) (15,31): cell 15 is in three tiles on each axis
@pytest.mark.parametrize("h,w", [(37, 53), (31, 31)])
@pytest.mark.parametrize("scale", [1, 8])
def test_tiled_map_of_a_local_map_is_exact_and_blocks_arrive_once_in_order(h, w, scale):
    z = torch.randn(2, 3, h, w)  # (B,C,h,w) in cells
    grid = tile_grid(h, w, 128)
    out = torch.full((2, 3, h * scale, w * scale), float("nan"))
    covered = torch.zeros(h * scale, w * scale, dtype=torch.int64)
    seen: list[tuple[int, int]] = []

    def sink(y0: int, x0: int, block: torch.Tensor) -> None:
        seen.append((y0, x0))
        k, m = block.shape[2:]
        out[:, :, y0 : y0 + k, x0 : x0 + m] = block
        covered[y0 : y0 + k, x0 : x0 + m] += 1

    def upsample(x: torch.Tensor) -> torch.Tensor:  # position-wise: blending changes nothing
        return x.repeat_interleave(scale, 2).repeat_interleave(scale, 3) * 2 + 1

    tiled_map(upsample, lambda r0, r1, c0, c1: z[:, :, r0:r1, c0:c1], grid, scale, sink)
    torch.testing.assert_close(out, upsample(z))
    assert bool((covered == 1).all())  # every output position exactly once
    assert seen == sorted(seen) and seen[0] == (0, 0)  # rows of tiles, left to right


def test_cropped_map_with_a_receptive_field_margin_is_exact():
    torch.manual_seed(1)
    # receptive field: 2 (k5 s2) + 2 x 1 (k3 at 1/2 scale) x 2 = 6 cells; strides line up
    # when windows start at multiples of 2
    net = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1),
                        nn.ReLU(), nn.Conv2d(8, 4, 3, 1, 1))  # fmt: skip
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        whole = net(x)
        out = torch.full_like(whole, float("nan"))
        cropped_map(net, x, out, core=16, margin=8, ratio=(1, 2))
        torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)
        short = torch.full_like(whole, float("nan"))
        cropped_map(net, x, short, core=16, margin=2, ratio=(1, 2))  # too little context
    assert not torch.allclose(short, whole, atol=1e-3)


@pytest.mark.parametrize("rate_index", [0, 7])  # downsampling 8 (widest field) and 1
def test_hyper_encoder_tiles_are_the_whole_latent(tiny_codec, rate_index):
    hyper = tiny_codec.model.hypers[rate_index]
    torch.manual_seed(2)
    z0 = torch.randn(1, 4, 96, 160)  # over a 128-px tile's 32x32-cell hyper cores
    with torch.inference_mode():
        whole = hyper.encode_indices(z0)
        tiled = tiled_encode_indices(hyper, z0, 128)
        # an argmax may flip where two codewords tie to float rounding: (almost) never
        assert (tiled == whole).float().mean() > 0.999
        z_tilde = tiled_decode_indices(hyper, whole, 128, 4)
        torch.testing.assert_close(z_tilde, hyper.decode_indices(whole), atol=1e-4, rtol=1e-4)


def test_group_norm_stats_of_the_whole_input_reproduce_group_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8))  # fmt: skip
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        reference = net(x)
        stats = GroupNormStats(net)
        with stats.gathering(1.0):
            gathered = net(x)
        with stats.normalising():
            renormed = net(x)
        # per-tile statistics differ from the image's: normalising with the gathered ones
        # changes a tile's output (the hooks are live), and the hooks go when the block ends
        with stats.normalising():
            half = net(x[..., :20])
        plain_half = net(x[..., :20])
    torch.testing.assert_close(gathered, reference)
    torch.testing.assert_close(renormed, reference, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(half, plain_half, atol=1e-3)
    assert all(not layer._forward_hooks for layer in stats.layers)


@pytest.mark.parametrize("n,target", [(1, 5), (2, 9), (5, 64), (7, 8), (33, 64), (64, 64)])
def test_padded_index_is_pad_reflect(n, target):
    x = torch.arange(n, dtype=torch.float64).view(1, 1, 1, n)
    expected = pad_reflect(x, 1, target).view(-1).long().numpy()
    np.testing.assert_array_equal(padded_index(n, target), expected)


def test_tiled_codec_bounds_every_stage_input_and_decodes_deterministically():
    # 200x330 px, padded to 256x384 (32x48 cells): over a 128-px tile's 16x16 cells and the
    # denoiser's 256-px tiles' 32x32 cells, so the encoder, denoiser and decoder all tile
    image = smooth_image(200, 330, seed=3)
    tiled, whole = Codec.from_pretrained(tile=128), Codec.from_pretrained(tile=0)
    inputs: dict[str, list[tuple[int, ...]]] = {"encoder": [], "decoder": [], "unet": []}
    vae, unet = tiled.model.autoencoder.vae, tiled.model.denoiser.unet
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].shape))
        for name, module in (("encoder", vae.encoder), ("decoder", vae.decoder), ("unet", unet))
    ]  # fmt: skip
    try:
        (stream,) = tiled.compress([image], 7)
        first, second = tiled.decompress([stream]), tiled.decompress([stream])
    finally:
        for hook in hooks:
            hook.remove()
    assert max(s[-1] for s in inputs["encoder"]) == 128  # pixels: never the 384-px image
    assert max(s[-1] for s in inputs["decoder"]) == 16  # cells of 128 px
    assert max(s[-1] for s in inputs["unet"]) == 32  # cells of 256 px
    np.testing.assert_array_equal(first[0], second[0])
    assert first[0].shape == (200, 330, 3)
    # the tiled path ran (the output differs) and stays close to the whole-image decode
    # (the shipped model; a random one is chaotic)
    (untiled,) = whole.decompress([stream])
    assert not np.array_equal(first[0], untiled)
    assert psnr(untiled, first[0]) > 30


def test_default_tile_leaves_small_images_whole(tiny_codec):
    assert tiny_codec.tile == DEFAULT_TILE
    assert tile_grid(512 // 8, 768 // 8, tiny_codec.tile) is None  # Kodak codes whole


def test_compress_refuses_an_image_over_max_pixels():
    codec = Codec.from_config("oscar-tiny", seed=0, max_pixels=100 * 100)
    with pytest.raises(ValueError, match=r"image 1: too many pixels: 101x100 = 10100 exceeds "
                       r"max_pixels = 10000"):  # fmt: skip
        codec.compress([smooth_image(100, 100), smooth_image(100, 101)], 0)


def test_seam_quality_on_a_kodak_image_within_a_tenth_of_a_db():
    """The shipped model on a Kodak sample (768x512): 384-px tiles (2 x 3, encoder and
    decoder tiled) vs the whole image, PSNR against the original at the top rate."""
    sample = sorted((DEFAULT_MODEL_DIR.parents[2] / "jobs" / "samples").glob("*.png"))[2]
    with Image.open(sample) as img:
        image = np.asarray(img.convert("RGB"))
    assert tile_grid(image.shape[0] // 8, image.shape[1] // 8, 384).count == 6
    scores = {}
    for tile in (0, 384):
        codec = Codec.from_pretrained(tile=tile)
        scores[tile] = psnr(image, codec.decompress(codec.compress([image], 7))[0])
    assert abs(scores[384] - scores[0]) <= 0.1, scores
