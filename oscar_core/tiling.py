"""Tiled latent coding: big images through the autoencoder, the denoiser and the
hyper-encoder in tiles, so that their working memory is set by the tile, not by the image.

Where the memory goes, untiled, for an image of P pixels: the autoencoder's activations at
full resolution (the dominant cost: oscar-tiny ~16 channels, SD-2.1's VAE 128-256, float32:
64-1024 bytes a pixel for each live tensor), the self-attention of SD's VAE mid block and of
the denoiser UNet (quadratic in the latent's positions), then the hyper-encoder's (64-320
channels at 1/64 of the pixels: 4-20 bytes a pixel a tensor). Tiled, each stage sees one
tile at a time; what remains proportional to P is the image itself (uint8, 3 bytes a
pixel), the latents (4 float32 channels at 1/64: 0.25 bytes a pixel) and the index grid.

The autoencoder's and the denoiser's grid, in latent cells (8x8 pixels), per axis::

    n cells, tile t, overlap o = t // 8, stride t - o; the last tile ends at n
    | tile 0            |
                  | tile 1            |
                                | tile 2 (shifted to end at n) |
    weights:  1 ... 1 \\ ramp /  1 ... \\ ramp / ...              (linear over each overlap)

Each tile's output is multiplied by its weight (a trapezoid: a linear ramp over the ``o``
cells at each side that another tile shares, 1 elsewhere) and the weights are normalised so
that, at every position, the tiles covering it sum to 1: the blend is an exact partition of
unity whatever the overlaps (the last tile may overlap more). Weights are separable
(rows x columns), so a 2-D position's weights also sum to 1. This is diffusers'
``AutoencoderKL.tiled_encode/tiled_decode`` blending, with three differences: overlaps need
not be equal; they are an eighth of a tile, not a quarter (with image-wide statistics, below,
Kodak PSNR moved by the same <= 0.015 dB at both in the decoder, and alike end to end, for
~1.5x fewer tiles); and each tile's output leaves as soon as it is final (``tiled_map``):
held are one tile, the columns it shares with the next and the overlap rows (x image width)
shared with the next row of tiles, never every tile's output (diffusers keeps all of them,
the size of the whole image).

The hyper-encoder is tiled exactly instead (``cropped_map``): its layers are convolutions
(compressai's ``AttentionBlock`` is one too: local), so a tile computed with a margin of its
receptive field around it, then cropped, is what the whole latent gives (up to float
rounding: an argmax may still flip where two codewords tie to ~1e-6). Its tiles are cores of
``HYPER_TILE_FACTOR`` x ``tile`` per side, computed with their margins: per pixel it holds
~5x less than the autoencoder, and a core of 2x keeps the window (core + 2 margins) no
larger than the whole latent of a 16 MP image, which is coded whole.

Image-wide GroupNorm statistics (``GroupNormStats``). Plain tiling normalises every tile by
its own statistics, and that is what costs quality: on Kodak (oscar-tiny, rate 7, 256-px
autoencoder tiles, 512-px denoiser tiles) tiles lost up to 0.18 dB in the denoiser and
0.15 dB in the decoder, and 0.00-0.07 dB once every GroupNorm was given the untiled run's
statistics (the encoder's z0 error fell from 3-10% to 0.1-0.3%). Those are not known
without the whole image, so the decode stages run twice: a first pass over non-overlapping
tiles gathers each GroupNorm's mean and mean square per group (each tile weighted by its
share of the image), the second normalises every tile with those. The first pass's deeper
statistics are approximate (its earlier layers normalised per tile); still, on the four
Kodak samples they cut the decoder's error vs untiled 3-5x (256-px tiles: 3.7-6.8% -> 0.8-4%)
and the denoiser's loss from 0.18 to 0.06 dB. Iterating does not converge (a third pass
made it worse; a fifth diverged), and for the encoder the one pass helped on three images
and tripled the error on one (its deep layers carry activations of variance ~1e4), so the
encoder normalises per tile (``Codec``). Cost: ~1.6x the plain tiled stage (the first pass
has no overlap).

Tiles change the output a little (each tile sees less context): decode is still
deterministic, because the grid is a fixed function of the padded image size and the
``tile`` setting (``Codec.tile``), never of anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

TILE_QUANTUM = 64  # tile sides are multiples of this many pixels (8 cells: the UNet's /8)
MIN_TILE = 128  # pixels; smaller tiles would see too little context to be worth it
DEFAULT_TILE = 1024  # pixels; images over DEFAULT_TILE**2 pixels (padded) are tiled
# The denoiser's tiles are this many times the autoencoder's per side. Why: its self-attention
# and GroupNorms see the whole tile, so small tiles cost quality (plain tiles, per-tile
# statistics; kodim03, oscar-tiny, rate 7: -0.25 dB with 256-px UNet tiles, -0.12 dB at
# 384, +0.01 dB at 512; image-wide statistics cut kodim15's -0.18 dB at 512 to -0.06),
# while per pixel it holds ~20x less than the autoencoder (oscar-tiny: ~96 floats a latent
# cell = 1.5 a pixel, vs ~30 a pixel in the VAE decoder; SD-2.1: ~9 vs ~230), so larger
# tiles stay cheaper.
UNET_TILE_FACTOR = 2
OVERLAP_FRACTION = 8  # overlap = tile // 8 (diffusers: 0.25; see above)
HYPER_TILE_FACTOR = 2  # the hyper-encoder's tile cores: 2x ``tile`` per side
# Margins of the hyper-encoder's tiles, in latent cells: its receptive field (measured by
# gradients on the reference layout, attention or not: encode <= 92 cells at ss=8, the
# projection back <= 32), rounded up to a multiple of the largest downsampling (8), so that
# a core's window starts on the code grid.
HYPER_ENCODE_MARGIN = 96
HYPER_DECODE_MARGIN = 32


def check_tile(tile: int) -> int:
    """The ``tile`` setting: 0 (never tile) or a multiple of 64 pixels >= 128."""
    if isinstance(tile, bool) or not isinstance(tile, int):
        raise ValueError(f'Invalid tile "{tile}", should be an integer number of pixels')
    if tile != 0 and (tile < MIN_TILE or tile % TILE_QUANTUM):
        raise ValueError(
            f'Invalid tile "{tile}", should be 0 (off) or a multiple of {TILE_QUANTUM} '
            f"pixels >= {MIN_TILE}"
        )
    return tile


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one padded latent (height x width cells) lie, per axis."""

    rows: tuple[tuple[int, int], ...]  # (start, end) in cells, starts and ends increasing
    cols: tuple[tuple[int, int], ...]
    overlap: int  # cells shared by neighbouring tiles (at least; the last may share more)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def without_overlap(self) -> TileGrid:
        """Tiles of the same size that overlap only where the last one must (stats pass)."""
        rows = axis_tiles(self.rows[-1][1], self.rows[0][1] - self.rows[0][0], 0)
        return TileGrid(rows, axis_tiles(self.cols[-1][1], self.cols[0][1] - self.cols[0][0], 0), 0)


def tile_grid(height: int, width: int, tile: int, factor: int = 1) -> TileGrid | None:
    """The grid for a padded latent of ``height x width`` cells and tiles of ``tile * factor``
    pixels (``factor``: 1 for the autoencoder, ``UNET_TILE_FACTOR`` for the denoiser), or
    None when the image is coded whole: tiling off (``tile == 0``) or the image's pixels (64
    a cell) within a tile's. An axis not longer than the tile is one tile."""
    t = tile * factor // 8  # cells
    if tile == 0 or height * width <= t * t:
        return None
    overlap = t // OVERLAP_FRACTION
    return TileGrid(axis_tiles(height, t, overlap), axis_tiles(width, t, overlap), overlap)


def axis_tiles(n: int, t: int, overlap: int) -> tuple[tuple[int, int], ...]:
    """(start, end) of the tiles along an axis of ``n`` cells: stride ``t - overlap``, the
    last tile shifted to end at ``n`` (so every tile has ``min(t, n)`` cells)."""
    if n <= t:
        return ((0, n),)
    starts = list(range(0, n - t, t - overlap)) + [n - t]
    return tuple((s, s + t) for s in starts)


def axis_weights(tiles: tuple[tuple[int, int], ...], overlap: int, scale: int) -> list[Tensor]:
    """Blend weights along one axis at ``scale`` output units per cell: one (length,) float32
    ramp per tile, normalised so that the tiles covering any position sum to 1."""
    n = tiles[-1][1] * scale
    ramp = overlap * scale
    raw = []
    for i, (start, end) in enumerate(tiles):
        length = (end - start) * scale
        w = torch.ones(length, dtype=torch.float64)
        u = torch.arange(length, dtype=torch.float64) + 0.5
        if i > 0 and ramp:  # shares its start with the previous tile: fade in
            w = torch.minimum(w, u / ramp)
        if i < len(tiles) - 1 and ramp:  # shares its end with the next tile: fade out
            w = torch.minimum(w, (length - u) / ramp)
        raw.append(w)
    total = torch.zeros(n, dtype=torch.float64)
    for (start, _), w in zip(tiles, raw, strict=True):
        total[start * scale : start * scale + len(w)] += w
    return [
        (w / total[start * scale : start * scale + len(w)]).float()
        for (start, _), w in zip(tiles, raw, strict=True)
    ]


class GroupNormStats:
    """Image-wide statistics for every ``nn.GroupNorm`` of a module, gathered tile by tile.

    While ``gathering(share)`` is open, each GroupNorm adds ``share`` x its input's mean and
    mean square per (image, group) (B,G) to float64 sums; while ``normalising()`` is open,
    each GroupNorm's output is replaced by its input normalised with the gathered mean and
    variance (then its affine map), exactly ``F.group_norm``'s formula with other statistics.
    Forward hooks, removed when the context closes: the module is unchanged afterwards.
    """

    def __init__(self, module: nn.Module):
        self.layers = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.sums: dict[nn.GroupNorm, tuple[Tensor, Tensor]] = {}
        self.total = 0.0  # the shares gathered (the image's area in cells)

    @contextmanager
    def _hooked(self, hook) -> Iterator[None]:
        handles = [layer.register_forward_hook(hook) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def gathering(self, share: float):
        self.total += share

        def hook(layer: nn.GroupNorm, args: tuple, output: Tensor) -> None:
            x = args[0].float()
            xg = x.reshape(x.shape[0], layer.num_groups, -1)  # (B,G,n)
            mean, square = xg.mean(-1).double() * share, xg.pow(2).mean(-1).double() * share
            old = self.sums.get(layer)
            self.sums[layer] = (mean, square) if old is None else (old[0] + mean, old[1] + square)

        return self._hooked(hook)

    def normalising(self):
        stats = {}
        for layer, (mean, square) in self.sums.items():
            mean, square = mean / self.total, square / self.total
            var = (square - mean * mean).clamp_min(0.0)
            stats[layer] = (
                mean.float()[..., None],
                torch.rsqrt(var.float()[..., None] + layer.eps),
            )

        def hook(layer: nn.GroupNorm, args: tuple, output: Tensor) -> Tensor:
            x = args[0].float()
            mean, inv_std = stats[layer]  # (B,G,1) each
            y = ((x.reshape(x.shape[0], layer.num_groups, -1) - mean) * inv_std).reshape_as(x)
            if layer.affine:
                y = y * layer.weight[:, None, None].float() + layer.bias[:, None, None].float()
            return y.to(output.dtype)

        return self._hooked(hook)


def cropped_map(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    out: Tensor,
    core: int,
    margin: int,
    ratio: tuple[int, int] = (1, 1),
) -> None:
    """``out = fn(x)`` computed core by core: each core of ``core x core`` input cells (the
    last ones shorter) is computed with ``margin`` cells of context around it, where there
    are any, and its own part of the output is copied into ``out``. ``x`` (..., h, w);
    ``fn`` maps (..., a, b) to (..., a*up/down, b*up/down) for ``ratio = (up, down)``, so
    ``core`` and ``margin`` must be multiples of ``down``. Exact when ``margin`` is at least
    ``fn``'s receptive field and its strides line up with the window (starts at multiples
    of ``down``); ``x`` within one core is computed whole."""
    up, down = ratio
    h, w = x.shape[-2:]

    def s(cells: int) -> int:  # input cells -> output positions
        return cells * up // down

    if h * w <= core * core:
        out.copy_(fn(x))
        return
    for r0 in range(0, h, core):
        r1, a0, a1 = min(r0 + core, h), max(0, r0 - margin), min(h, r0 + core + margin)
        for c0 in range(0, w, core):
            c1, b0, b1 = min(c0 + core, w), max(0, c0 - margin), min(w, c0 + core + margin)
            y = fn(x[..., a0:a1, b0:b1])  # the window, then its core's part of the output
            rows, cols = slice(s(r0 - a0), s(r1 - a0)), slice(s(c0 - b0), s(c1 - b0))
            out[..., s(r0) : s(r1), s(c0) : s(c1)] = y[..., rows, cols]


def tiled_encode_indices(hyper: nn.Module, z0: Tensor, tile: int) -> Tensor:
    """``hyper.encode_indices``: z0 (B,4,h,w) -> indices (B,h/d,w/d) int64, in exact tiles
    (cores of HYPER_TILE_FACTOR x ``tile`` pixels; ``tile`` 0: whole)."""
    if tile == 0:
        return hyper.encode_indices(z0)
    d = hyper.rate.downsample
    out = z0.new_empty((z0.shape[0], z0.shape[2] // d, z0.shape[3] // d), dtype=torch.long)
    core = tile * HYPER_TILE_FACTOR // 8  # latent cells, a multiple of 16 >= d
    cropped_map(hyper.encode_indices, z0, out, core, HYPER_ENCODE_MARGIN, (1, d))
    return out


def tiled_decode_indices(hyper: nn.Module, indices: Tensor, tile: int, channels: int) -> Tensor:
    """``hyper.decode_indices``: indices (B,hc,wc) -> z~ (B,channels,hc*d,wc*d) float32, in
    exact tiles (as ``tiled_encode_indices``)."""
    if tile == 0:
        return hyper.decode_indices(indices)
    d = hyper.rate.downsample
    b, hc, wc = indices.shape
    out = torch.empty((b, channels, hc * d, wc * d), device=indices.device)
    core = tile * HYPER_TILE_FACTOR // 8 // d  # code cells
    cropped_map(hyper.decode_indices, indices, out, core, HYPER_DECODE_MARGIN // d, (d, 1))
    return out


def tiled_map(
    fn: Callable[[Tensor], Tensor],
    read: Callable[[int, int, int, int], Tensor],
    grid: TileGrid,
    scale: int,
    sink: Callable[[int, Tensor], None],
    norms: nn.Module | None = None,
) -> None:
    """Apply ``fn`` tile by tile and hand the blended output to ``sink``, row strip by strip.

    ``read(r0, r1, c0, c1)`` gives the input of the cells [r0, r1) x [c0, c1) (any units:
    the caller scales); ``fn`` maps it to (B, C, (r1-r0)*scale, (c1-c0)*scale); ``sink(y0,
    x0, block)`` receives finished output blocks (B, C, k, m) whose top-left output position
    is (``y0``, ``x0``), row of tiles by row of tiles, left to right; the blocks cover the
    output once, without overlap. Held at a time: one tile's output, its columns shared with
    the next tile and the overlap rows shared with the next row of tiles (x width).
    ``norms``: the module ``fn`` runs, whose GroupNorms then use image-wide statistics
    (``GroupNormStats``: a first pass over ``grid.without_overlap()`` gathers them).
    """
    if norms is None:
        _blend(fn, read, grid, scale, sink)
        return
    stats = GroupNormStats(norms)
    first = grid.without_overlap()
    row_share = [float(w.sum()) for w in axis_weights(first.rows, 0, 1)]
    col_share = [float(w.sum()) for w in axis_weights(first.cols, 0, 1)]
    for (r0, r1), rs in zip(first.rows, row_share, strict=True):
        for (c0, c1), cs in zip(first.cols, col_share, strict=True):
            with stats.gathering(rs * cs):
                fn(read(r0, r1, c0, c1))
    with stats.normalising():
        _blend(fn, read, grid, scale, sink)


def _blend(fn, read, grid: TileGrid, scale: int, sink) -> None:
    """``tiled_map`` without image-wide norms: every tile normalised by its own statistics.

    Starts and ends increase along both axes, so a tile's output is final, once blended,
    left of the next tile's first column and above the next strip's first row: that part
    goes to ``sink`` at once. Held at a time: one tile's output, the columns it shares with
    the next tile (``pending``: tile height x overlap) and the rows the strip shares with the
    next strip (``carry``: overlap x image width; the old one and the one being built). The
    last tile may share more than the overlap (it is shifted to end at the edge), even with
    the tile before last: what is shared is added into the next tile's output, so it moves
    on with that tile's own shared part."""
    row_w = axis_weights(grid.rows, grid.overlap, scale)
    col_w = axis_weights(grid.cols, grid.overlap, scale)
    width = grid.cols[-1][1] * scale
    carry: Tensor | None = None  # (B,C,k,width): blended rows shared with this strip, from y0
    for i, ((r0, r1), wy) in enumerate(zip(grid.rows, row_w, strict=True)):
        y0, y1 = r0 * scale, r1 * scale
        # rows before the next strip's start are final (later strips start further down)
        end = min(grid.rows[i + 1][0] * scale, y1) if i + 1 < len(grid.rows) else y1
        next_carry: Tensor | None = None
        pending: Tensor | None = None  # (B,C,y1-y0,k): the previous tile's shared columns
        carried_to = 0  # columns [0, carried_to) of ``carry`` are in earlier tiles' outputs
        for j, ((c0, c1), wx) in enumerate(zip(grid.cols, col_w, strict=True)):
            x0, x1 = c0 * scale, c1 * scale
            out = fn(read(r0, r1, c0, c1))  # (B,C,y1-y0,x1-x0)
            out = out * (wy[:, None] * wx[None, :]).to(out.device, out.dtype)
            if pending is not None:
                out[..., : pending.shape[3]] += pending
            if carry is not None:  # once per column: pending already holds the columns before
                out[:, :, : carry.shape[2], carried_to - x0 :] += carry[..., carried_to:x1]
                carried_to = x1
            final = (grid.cols[j + 1][0] * scale if j + 1 < len(grid.cols) else x1) - x0
            if end > y0:
                sink(y0, x0, out[:, :, : end - y0, :final])
            if end < y1:
                if next_carry is None:
                    next_carry = out.new_zeros(*out.shape[:2], y1 - end, width)
                next_carry[..., x0 : x0 + final] = out[:, :, end - y0 :, :final]
            pending = out[..., final:].clone() if final < x1 - x0 else None
        carry = next_carry
