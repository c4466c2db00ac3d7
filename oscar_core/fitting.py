"""Fitting a model directory's context model from images (``oscar fit-context``).

    images --Codec.rate_indices--> index grids per rate (cached by image content)
    grids, codebook --estimate_rate_context--> RateContext (integer tables, ``context.py``)
    -> ``context.safetensors`` in the model directory (the weights file is not touched)

Estimation, per rate (float math here is fine: only its integer result is stored, and every
decoder reads the same integers):

1. ``groups``: spherical k-means (cosine, as the VQ) of the K unit codewords into
   G = min(K, 64) clusters (K <= 64: each code its own group), seeded: deterministic.
2. ``static``: the index histogram + 1/2 per code; ``tables[n]``: for each neighbour n, the
   histogram of x per group of n (row G: n absent), smoothed towards ``static`` with the
   mass of ``SMOOTHING`` symbols. Rows are quantised to integers >= 1 summing to 2**16
   (largest remainder).
3. ``weights``: EM for the mixture weights of each class (``context.context_class``), with
   tables fitted on one half of the images scoring the other half (held out, so the copy and
   table terms are not over-trusted), both ways; sparse classes shrink to the pooled
   weights. Quantised to integers summing to 2**8 with the static weight >= 1.

The fit of the shipped model (580 training photos, docs/model-card.md) takes ~15 min on
2 CPU cores, nearly all of it computing the indices; ``cache`` keeps them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .codec import Codec
from .context import (
    FREQ_BITS,
    MAX_GROUPS,
    N_CLASSES,
    N_COMPONENTS,
    N_NEIGHBOURS,
    TABLE_BITS,
    WEIGHT_BITS,
    ContextModel,
    RateContext,
    context_class,
    neighbours,
)
from .entropy import fixed_length_bits
from .images import to_rgb_array

SMOOTHING = 4.0  # symbols' worth of the static pmf added to every table row
SHRINKAGE = 20.0  # symbols' worth of the pooled weights added to every class
EM_ITERATIONS = 40
KMEANS_ITERATIONS = 30


def quantise_rows(p: np.ndarray, total: int, minimum: np.ndarray | int = 1) -> np.ndarray:
    """Rows of non-negative floats (..., K) -> integers >= ``minimum`` summing to ``total``
    (largest remainder; ties to the lower index)."""
    p = np.asarray(p, dtype=np.float64)
    low = np.broadcast_to(np.asarray(minimum, dtype=np.int64), p.shape)
    free = total - low.sum(axis=-1, keepdims=True)
    if np.any(free < 0):
        raise ValueError(f"minimum frequencies exceed the total {total}")
    share = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-300) * free
    q = low + np.floor(share).astype(np.int64)
    short = total - q.sum(axis=-1)  # (...,) in [0, K)
    remainder = share - np.floor(share)
    order = np.argsort(-remainder, axis=-1, kind="stable")
    rank = np.argsort(order, axis=-1, kind="stable")
    return q + (rank < short[..., None])


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Unit vectors (K, D) -> cluster of each (K,) int64 in [0, k), by cosine similarity."""
    n = x.shape[0]
    if k >= n:
        return np.arange(n, dtype=np.int64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, k, replace=False)]
    for _ in range(KMEANS_ITERATIONS):
        labels = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            members = x[labels == c]
            if len(members):  # an empty cluster keeps its centre
                mean = members.sum(axis=0)
                centres[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    labels = np.argmax(x @ centres.T, axis=1)
    _, labels = np.unique(labels, return_inverse=True)  # drop empty clusters: 0..G-1
    return labels.astype(np.int64)


def _positions(grids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every position of every grid: (symbols (n,), neighbours (n, 4))."""
    xs, nbs = [], []
    for g in grids:
        h, w = g.shape
        padded = np.full((h + 1, w + 2), -1, dtype=np.int64)
        padded[1:, 1:-1] = g
        i, j = (a.reshape(-1) for a in np.mgrid[0:h, 0:w])
        xs.append(g.reshape(-1).astype(np.int64))
        nbs.append(neighbours(padded, i, j))
    return np.concatenate(xs), np.concatenate(nbs)


def _tables(x: np.ndarray, nb: np.ndarray, groups: np.ndarray, K: int):
    """Integer static (K,) and tables (4, G + 1, K) from symbols and their neighbours."""
    G = int(groups.max()) + 1
    counts = np.bincount(x, minlength=K) + 0.5
    p0 = counts / counts.sum()
    static = quantise_rows(p0, 1 << TABLE_BITS)
    tables = np.empty((N_NEIGHBOURS, G + 1, K), dtype=np.int64)
    for n in range(N_NEIGHBOURS):
        ctx = np.where(nb[:, n] >= 0, groups[np.maximum(nb[:, n], 0)], G)
        c = np.bincount(ctx * K + x, minlength=(G + 1) * K).reshape(G + 1, K).astype(float)
        rows = (c + SMOOTHING * p0) / (c.sum(axis=1, keepdims=True) + SMOOTHING)
        tables[n] = quantise_rows(rows, 1 << TABLE_BITS)
    return static, tables


def _component_probs(x, nb, groups, static, tables) -> np.ndarray:
    """(n, 9) probability of each true symbol under each mixture component (an absent
    neighbour's copy term is the static pmf, as in ``RateContext.frequencies``)."""
    G = tables.shape[1] - 1
    p = np.empty((x.size, N_COMPONENTS))
    p[:, 0] = static[x] / (1 << TABLE_BITS)
    for n in range(N_NEIGHBOURS):
        ctx = np.where(nb[:, n] >= 0, groups[np.maximum(nb[:, n], 0)], G)
        p[:, 1 + n] = tables[n, ctx, x] / (1 << TABLE_BITS)
        copy = (nb[:, n] == x).astype(float)
        p[:, 1 + N_NEIGHBOURS + n] = np.where(nb[:, n] >= 0, copy, p[:, 0])
    return p


def _em_weights(p: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Mixture weights per class (N_CLASSES, 9) maximising sum log(w[cls] . p)."""
    w = np.full((N_CLASSES, N_COMPONENTS), 1.0 / N_COMPONENTS)
    pooled = w[0].copy()
    n_cls = np.bincount(cls, minlength=N_CLASSES).astype(float)
    for _ in range(EM_ITERATIONS):
        r = w[cls] * p
        r /= np.maximum(r.sum(axis=1, keepdims=True), 1e-300)
        pooled = r.mean(axis=0)
        sums = np.stack([np.bincount(cls, r[:, c], N_CLASSES) for c in range(N_COMPONENTS)], 1)
        w = (sums + SHRINKAGE * pooled) / (n_cls[:, None] + SHRINKAGE)
    return w


def estimate_rate_context(grids: list[np.ndarray], K: int, codewords: np.ndarray) -> RateContext:
    """A rate's integer context model from its index grids on training images and its unit
    codewords (K, D) (module docstring)."""
    if not grids:
        raise ValueError("no index grids to fit on")
    groups = spherical_kmeans(np.asarray(codewords, dtype=np.float64), min(K, MAX_GROUPS))
    halves = [grids[0::2], grids[1::2]] if len(grids) > 1 else [grids, grids]
    probs, classes = [], []
    for fit_on, score_on in (halves, halves[::-1]):
        static, tables = _tables(*_positions(fit_on), groups, K)
        x, nb = _positions(score_on)
        probs.append(_component_probs(x, nb, groups, static, tables))
        classes.append(context_class(nb))
    w = _em_weights(np.concatenate(probs), np.concatenate(classes))
    minimum = np.zeros(N_COMPONENTS, dtype=np.int64)
    minimum[0] = 1  # every symbol keeps a frequency >= 1
    weights = quantise_rows(w, 1 << WEIGHT_BITS, minimum)
    static, tables = _tables(*_positions(grids), groups, K)
    return RateContext(groups, static, tables, weights)


@dataclass
class RateFit:
    """Bits per image on the training images, per probability model (ideal, no seal)."""

    K: int
    symbols: int
    fixed_bits: float
    static_bits: float
    context_bits: float

    def line(self, rate_index: int) -> str:
        saved = 1 - self.context_bits / self.fixed_bits
        return (
            f"rate {rate_index} (K={self.K}): {self.symbols} indices/image, bits/image fixed "
            f"{self.fixed_bits:.0f}, static pmf {self.static_bits:.0f}, context "
            f"{self.context_bits:.0f} ({saved:+.1%} vs fixed, training images)"
        )


@dataclass
class ContextFit:
    model_dir: str
    images: int
    old_id: str
    new_id: str
    seconds: float
    rates: list[RateFit] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f.line(r) for r, f in enumerate(self.rates)]


def _image_key(array: np.ndarray) -> str:
    return hashlib.sha1(f"{array.shape}".encode() + array.tobytes()).hexdigest()[:16]


def _load_image(item: Image.Image | np.ndarray | str | Path) -> np.ndarray:
    if isinstance(item, str | Path):
        try:
            with Image.open(item) as im:
                return to_rgb_array(im.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{item}: not a readable image: {exc}") from exc
    return to_rgb_array(item)


def fit_context_model(
    model_dir: str | Path,
    images: Iterable[Image.Image | np.ndarray | str | Path],
    cache: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> ContextFit:
    """Fit the context model of ``model_dir`` on ``images`` (arrays, PIL images or paths)
    and write ``context.safetensors`` there; the model id changes (old streams of format 3
    keep decoding, ``bitstream.py``). ``cache``: an ``.npz`` of index grids keyed by the
    model's base id and the image content, read if present and rewritten."""
    t0 = time.perf_counter()
    codec = Codec.from_pretrained(model_dir)
    model = codec.model
    old_id = codec.model_id.hex()
    base = codec.base_model_id.hex()
    cached: dict[str, np.ndarray] = {}
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as f:
            cached = {k: f[k] for k in f.files if k.startswith(base)}
    grids: list[list[np.ndarray]] = [[] for _ in model.ladder]
    n_images = 0
    for k, item in enumerate(images):
        try:
            array = _load_image(item)
        except ValueError as exc:
            raise ValueError(f"image {k}: {exc}") from None
        key = f"{base}_{_image_key(array)}"
        if f"{key}_0" not in cached:
            for r, g in enumerate(codec.rate_indices(array)):
                cached[f"{key}_{r}"] = g.astype(np.int16)
        for r in range(len(model.ladder)):
            grids[r].append(cached[f"{key}_{r}"].astype(np.int64))
        n_images += 1
        if log and n_images % 50 == 0:
            log(f"indices of {n_images} images ({time.perf_counter() - t0:.0f} s)")
    if not n_images:
        raise ValueError("no images to fit the context model on")
    if cache is not None:
        np.savez_compressed(cache, **cached)
    rates, report = [], []
    for rate, rate_grids in zip(model.ladder, grids, strict=True):
        codewords = model.hypers[rate.index].codewords().detach().cpu().double().numpy()
        rc = estimate_rate_context(rate_grids, rate.K, codewords)
        rates.append(rc)
        x, nb = _positions(rate_grids)
        static_bits = codec.coder(rate.index).ideal_bits(x)
        context_bits = float(np.sum(FREQ_BITS - np.log2(rc.frequency_of(nb, x))))
        report.append(
            RateFit(
                K=rate.K,
                symbols=x.size // n_images,
                fixed_bits=fixed_length_bits(x.size, rate.K) / n_images,
                static_bits=static_bits / n_images,
                context_bits=context_bits / n_images,
            )
        )
        if log:
            log(report[-1].line(rate.index))
    model.context = ContextModel(tuple(rates), images=n_images)
    model.context.save(model_dir)
    return ContextFit(
        model_dir=str(model_dir),
        images=n_images,
        old_id=old_id,
        new_id=model.model_id().hex(),
        seconds=time.perf_counter() - t0,
        rates=report,
    )
