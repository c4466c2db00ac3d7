"""``Codec``: batches of images <-> OSCAR bitstreams (the CompressAI-style contract).

    compress(images, rate) -> list[bytes]        one self-contained bitstream per image
    decompress(list[bytes]) -> list[np.ndarray]  (H,W,3) uint8, the input's exact size

Same-size images are coded together in batches of ``batch_size``. Every input is validated
before any work starts: a bad image raises ``ValueError`` and a bad bitstream
``BitstreamError`` naming the position and the reason.

Determinism: the encoder uses the posterior mode and an argmax; the decoder is a fixed chain
of float ops. The same process gives bit-identical output; another batch size or thread
count can change the float summation order (oneDNN/BLAS blocking) by ~1e-6, which may move a
pixel across a rounding boundary: at most one level of 8 bits (tested).

Precision (``precision="bf16"``, opt-in; see ``oscar_core.precision``): latent encode,
denoiser and latent decode run under bf16 autocast (~1.7x / ~1.3x / ~2.1x faster on an
AVX512-BF16 CPU); the VQ argmax and entropy coding stay fp32/integer. Outputs are the same
types (float32 tensors inside, uint8 images out). A bf16 decode differs from the fp32 decode
of the same stream by a fraction of one 8-bit level on average (docs/benchmarks/README.md);
the determinism statements above are for fp32.

Large images (``tile``, default 1024 px; ``oscar_core.tiling``): an image whose padded size
exceeds tile**2 pixels goes through the autoencoder (and, over (2 tile)**2, the denoiser) in
overlapping tiles with linear blending, so its working memory is set by the tile; the
hyper-encoder, the indices and the bitstream stay one per image (the format is unchanged).
The decoder's tiling is a fixed function of the stream's size, the model and its own
``tile``: decode with the default (or one fixed ``tile``) for reproducible pixels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import bitstream
from .context_coder import StreamCoder
from .entropy import IndexCoder
from .errors import BitstreamError
from .hyper import channel_rms, match_norms
from .images import (
    crop,
    pad_reflect,
    padded_index,
    padded_size,
    pixel_limit_error,
    rgb_arrays,
    to_rgb_array,
    to_tensor,
    to_uint8,
    to_uint8_batch,
)
from .ladder import Rate, RateLadder
from .model import OscarModel
from .precision import compute_precision, configure_cuda_determinism, resolve_precision
from .registry import get_config
from .tiling import (
    DEFAULT_TILE,
    UNET_TILE_FACTOR,
    check_tile,
    tile_grid,
    tiled_decode_indices,
    tiled_encode_indices,
    tiled_map,
)

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "oscar-tiny"
# Largest image coded or decoded (64 MP: an 8000x8000 photo passes, a 1e9-pixel bomb does
# not); the pipeline applies the same limit to the images it reads (pipeline/samples.py).
DEFAULT_MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class Parsed:
    """A validated bitstream: its header, its rate and its decoded indices (B=1)."""

    header: bitstream.Header
    rate: Rate
    indices: np.ndarray  # (hc, wc) int64


class Codec:
    def __init__(
        self,
        model: OscarModel,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        precision: str = "fp32",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        tile: int = DEFAULT_TILE,
    ):
        if batch_size < 1:
            raise ValueError(f'Invalid batch_size "{batch_size}", should be >= 1')
        if max_pixels < 1:
            raise ValueError(f'Invalid max_pixels "{max_pixels}", should be >= 1')
        # A 14-byte stream may declare 65535x65535: parse refuses more than this many pixels
        # before it allocates the index grid (or the decoder the image).
        self.max_pixels = max_pixels
        # Tiled latent coding (``tiling.py``): an image whose padded size exceeds tile**2
        # pixels goes through the autoencoder in overlapping tiles of ``tile`` pixels (the
        # denoiser: UNET_TILE_FACTOR x ``tile``, over its square); 0 never tiles. The
        # decoder's grid follows from the header's size, the model's padding and this
        # setting; the stream does not depend on the encoder's (the indices and RMS say all).
        self.tile = check_tile(tile)
        self.device = torch.device(device)
        # "fp32" or "bf16" (ValueError where the device has no native bf16)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cuda" and self.precision == "fp32":
            configure_cuda_determinism(self.device)  # TF32 off, deterministic kernels
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.model_id: bytes = model.model_id()
        # what format-3 streams (static pmf only, written before context models) are under
        self.base_model_id: bytes = model.base_model_id()
        self._coders: dict[int, IndexCoder] = {}
        self._stream_coders: dict[int, StreamCoder] = {}

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, **kwargs) -> Codec:
        """Load a model directory (default: the model shipped with the package).

        ``kwargs`` go to the constructor: ``device``, ``batch_size``, ``precision``
        ("fp32" or "bf16"), ``max_pixels``, ``tile`` (pixels, 0 = never tile)."""
        return cls(OscarModel.from_pretrained(directory or DEFAULT_MODEL_DIR), **kwargs)

    @classmethod
    def from_config(cls, name: str = "oscar-tiny", seed: int = 0, **kwargs) -> Codec:
        """A randomly initialised model of a registered configuration (seeded), with random
        codebooks (see ``HyperEncoder.randomize_codebook``)."""
        torch.manual_seed(seed)
        model = OscarModel(get_config(name))
        for hyper in model.hypers:
            hyper.randomize_codebook()
        return cls(model, **kwargs)

    @property
    def ladder(self) -> RateLadder:
        return self.model.ladder

    def coder(self, rate_index: int) -> IndexCoder:
        """The range coder under the rate's static pmf."""
        if rate_index not in self._coders:
            pmf = self.model.pmf(rate_index).double().cpu().numpy()
            self._coders[rate_index] = IndexCoder(pmf)
        return self._coders[rate_index]

    def stream_coder(self, rate_index: int) -> StreamCoder:
        """The rate's probability models (uniform, static pmf, context model when the model
        has one); ``encode`` keeps the cheapest per stream (``context_coder.py``)."""
        if rate_index not in self._stream_coders:
            context = self.model.context
            tables = context.rates[rate_index] if context is not None else None
            self._stream_coders[rate_index] = StreamCoder(self.coder(rate_index), tables)
        return self._stream_coders[rate_index]

    # -- the heavy stages, at the codec's precision (float32 in, float32 out) ------------
    def latent_encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,H,W) in [-1,1] -> z0 (B,4,H/8,W/8) float32."""
        with compute_precision(self.precision, self.device):
            z0 = self.model.autoencoder.encode(x)
        return z0.float()  # bf16 -> fp32 before the VQ argmax (fp32 is a no-op)

    def denoise(self, x_t: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        """x_t (B,4,h,w) float32, t_r (B,) int64 -> z0_hat (B,4,h,w) float32 (one step)."""
        with compute_precision(self.precision, self.device):
            z0_hat = self.model.denoiser(x_t, t_r)
        return z0_hat.float()

    def encode_indices(self, z0: torch.Tensor, rate_index: int) -> torch.Tensor:
        """z0 (B,4,h,w) -> indices (B,h/d,w/d) int64 (argmax cosine, fp32 whatever the
        precision: bf16 flips many), in exact tiles above the tile size (``tiling.py``)."""
        return tiled_encode_indices(self.model.hypers[rate_index], z0, self.tile)

    def latent_decode(self, z0_hat: torch.Tensor) -> torch.Tensor:
        """z0_hat (B,4,h,w) -> x_hat (B,3,8h,8w) float32 in [-1,1]."""
        with compute_precision(self.precision, self.device):
            x_hat = self.model.autoencoder.decode(z0_hat)
        return x_hat.float()

    # -- encode ------------------------------------------------------------------------
    @torch.inference_mode()
    def compress(
        self, images: Sequence[Image.Image | np.ndarray], rate: int | float | str | Rate
    ) -> list[bytes]:
        # 1. Check inputs (all of them, before any work)
        r = self.ladder.resolve(rate)
        arrays = rgb_arrays(images)
        for i, array in enumerate(arrays):  # the limit parse applies to streams
            if error := pixel_limit_error(array.shape[1], array.shape[0], self.max_pixels):
                raise ValueError(f"image {i}: {error}")
        out: list[bytes | None] = [None] * len(arrays)
        # 2. Code same-size images together
        for positions in self._batches([a.shape[:2] for a in arrays]):
            streams = self._compress_batch([arrays[i] for i in positions], r)
            for i, s in zip(positions, streams, strict=True):
                out[i] = s
        return out  # type: ignore[return-value]

    def _latents(self, batch: list[np.ndarray], multiple: int) -> torch.Tensor:
        """Same-size (H,W,3) uint8 arrays -> z0 (B,4,ph/8,pw/8), padded to ``multiple``."""
        height, width = batch[0].shape[:2]
        ph, pw = padded_size(height, width, multiple)
        grid = tile_grid(ph // 8, pw // 8, self.tile)
        if grid is None:
            x = pad_reflect(to_tensor(batch).to(self.device), ph, pw)  # (B,3,ph,pw)
            return self.latent_encode(x)  # float32
        # Tiled: each tile of the padded image is read from the uint8 arrays (the padded
        # image, 12 bytes a pixel in float32, is never built) and encoded alone.
        rows, cols = padded_index(height, ph), padded_index(width, pw)
        channels = self.model.config.autoencoder.latent_channels
        z0 = torch.empty(len(batch), channels, ph // 8, pw // 8, device=self.device)

        def read(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:  # cells -> pixels
            ix = np.ix_(rows[r0 * 8 : r1 * 8], cols[c0 * 8 : c1 * 8])
            return to_tensor([a[ix] for a in batch]).to(self.device)  # (B,3,8(r1-r0),8(c1-c0))

        # per-tile GroupNorm statistics: image-wide ones from a first pass made the
        # encoder worse on one Kodak image in four (tiling.py)
        tiled_map(self.latent_encode, read, grid, 1, _rows_into(z0))
        return z0

    def _compress_batch(self, batch: list[np.ndarray], rate: Rate) -> list[bytes]:
        height, width = batch[0].shape[:2]
        z0 = self._latents(batch, self.model.pad_multiple(rate.index))  # (B,4,ph/8,pw/8)
        rms = channel_rms(z0).cpu()  # (B,4); Header rounds it to the 1/16-octave code
        # fp32 whatever the precision: bf16 here flips many argmax indices (precision.py)
        indices = self.encode_indices(z0, rate.index).cpu().numpy()  # (B,hc,wc)
        return self.pack_streams(indices, rms, rate.index, height, width)

    def pack_streams(
        self, indices: np.ndarray, rms: torch.Tensor, rate_index: int, height: int, width: int
    ) -> list[bytes]:
        """The entropy-coding stage: indices (B,hc,wc) + channel RMS (B,4) of images of one
        size -> one bitstream each (header + the cheapest probability model's payload)."""
        coder = self.stream_coder(rate_index)
        streams = []
        for b in range(len(indices)):
            probability_model, payload = coder.encode(indices[b])  # the cheapest model
            header = bitstream.Header(
                model_id=self.model_id,
                rate_index=rate_index,
                height=height,
                width=width,
                rms=tuple(float(v) for v in rms[b]),
                probability_model=probability_model,
            )
            streams.append(bitstream.pack(header, payload))
        return streams

    @torch.inference_mode()
    def index_counts(self, images: Sequence[Image.Image | np.ndarray]) -> list[np.ndarray]:
        """Histogram of the VQ indices of ``images`` at every rate: (K_r,) int64 per rate.

        The entropy coder's pmfs are estimated from these (``oscar fit-entropy``); z0 is
        computed once per image, padded to the largest multiple any rate needs."""
        multiple = max(self.model.pad_multiple(r.index) for r in self.ladder)
        counts = [np.zeros(r.K, dtype=np.int64) for r in self.ladder]
        for array in rgb_arrays(images):
            z0 = self._latents([array], multiple)
            for r in self.ladder:
                indices = self.encode_indices(z0, r.index).cpu().numpy()
                counts[r.index] += np.bincount(indices.ravel(), minlength=r.K)
        return counts

    @torch.inference_mode()
    def rate_indices(self, image: Image.Image | np.ndarray) -> list[np.ndarray]:
        """The index grid (hc, wc) int64 of one image at every rate, exactly as ``compress``
        codes it (z0 computed once per padding multiple). The context model is fitted on
        these (``oscar_core.fitting``)."""
        array = to_rgb_array(image)
        z0s: dict[int, torch.Tensor] = {}
        grids = []
        for r in self.ladder:
            multiple = self.model.pad_multiple(r.index)
            if multiple not in z0s:
                z0s[multiple] = self._latents([array], multiple)  # (1,4,ph/8,pw/8)
            grids.append(self.encode_indices(z0s[multiple], r.index)[0].cpu().numpy())
        return grids

    # -- decode ------------------------------------------------------------------------
    def parse(self, stream: bytes) -> Parsed:
        """Validate one bitstream against this model and entropy-decode its indices."""
        # The CRC is seeded with our model id (format 3: the id without the context model):
        # a stream from another model fails it.
        header, payload = bitstream.unpack(stream, self.model_id, self.base_model_id)
        if header.rate_index >= len(self.ladder):
            raise BitstreamError(
                f"rate index {header.rate_index} not on this model's ladder (0..{len(self.ladder) - 1})"
            )
        rate = self.ladder[header.rate_index]
        # before entropy decoding: a bomb costs nothing
        if error := pixel_limit_error(header.width, header.height, self.max_pixels):
            raise BitstreamError(error)
        # The padded latent (B,4,ph/8,pw/8) follows from (H, W) and the rate's padding rule;
        # the code grid is that divided by the hyper-encoder's downsampling.
        ph, pw = padded_size(header.height, header.width, self.model.pad_multiple(rate.index))
        hc, wc = ph // 8 // rate.downsample, pw // 8 // rate.downsample
        coder = self.stream_coder(rate.index)
        indices = coder.decode(header.probability_model, payload, hc, wc)
        return Parsed(header, rate, indices)

    @torch.inference_mode()
    def decompress(self, streams: Sequence[bytes]) -> list[np.ndarray]:
        # 1. Check inputs: parse every stream first (BitstreamError names the position)
        parsed = []
        for i, stream in enumerate(streams):
            try:
                parsed.append(self.parse(stream))
            except BitstreamError as exc:
                raise BitstreamError(f"bitstream {i}: {exc}") from None
        # 2. Decode streams of the same rate and size together
        return self.decode_parsed(parsed)

    @torch.inference_mode()
    def decode_parsed(self, parsed: Sequence[Parsed]) -> list[np.ndarray]:
        """Decode already validated streams (see ``parse``), batching same rate and size."""
        out: list[np.ndarray | None] = [None] * len(parsed)
        keys = [(p.rate.index, p.header.height, p.header.width) for p in parsed]
        for positions in self._batches(keys):
            images = self._decompress_batch([parsed[i] for i in positions])
            for i, img in zip(positions, images, strict=True):
                out[i] = img
        return out  # type: ignore[return-value]

    def _decompress_batch(self, batch: list[Parsed]) -> list[np.ndarray]:
        rate, header = batch[0].rate, batch[0].header
        indices = torch.from_numpy(np.stack([p.indices for p in batch])).to(self.device)
        rms = torch.tensor([p.header.rms for p in batch], dtype=torch.float32, device=self.device)
        channels = self.model.config.autoencoder.latent_channels
        z_tilde = tiled_decode_indices(self.model.hypers[rate.index], indices, self.tile, channels)
        x_t = match_norms(z_tilde, rms)  # the noisy state at t_r (norms of the whole image)
        del z_tilde  # each full latent is 1 float32 a pixel / 16: held only while needed
        t_r = torch.full((len(batch),), rate.t, dtype=torch.long, device=self.device)
        h, w = x_t.shape[2:]
        unet_grid = tile_grid(h, w, self.tile, UNET_TILE_FACTOR)
        if unet_grid is None:
            z0_hat = self.denoise(x_t, t_r)  # one step, (B,4,h,w) float32
        else:
            z0_hat = torch.empty_like(x_t)
            denoise = lambda x: self.denoise(x, t_r)  # noqa: E731
            tiled_map(denoise, _cells(x_t), unet_grid, 1, _rows_into(z0_hat), self.model.denoiser)
        del x_t
        grid = tile_grid(h, w, self.tile)
        if grid is None:
            x_hat = self.latent_decode(z0_hat)  # (B,3,8h,8w) float32 in [-1,1]
            return to_uint8(crop(x_hat, header.height, header.width).cpu())
        # Tiled: finished pixel blocks go straight to uint8 (the float image is never whole)
        out = np.empty((len(batch), header.height, header.width, 3), dtype=np.uint8)

        def pixels(y0: int, x0: int, block: torch.Tensor) -> None:  # (B,3,k,m) in [-1,1]
            k = min(block.shape[2], header.height - y0)  # rows below H, columns right of W
            m = min(block.shape[3], header.width - x0)  # are padding
            for i in range(0, k, 64):  # 64 rows at a time: small float temporaries
                j = min(k, i + 64)
                out[:, y0 + i : y0 + j, x0 : x0 + m] = to_uint8_batch(block[:, :, i:j, :m])

        tiled_map(self.latent_decode, _cells(z0_hat), grid, 8, pixels, self.model.autoencoder)
        return list(out)

    def _batches(self, keys: Sequence) -> list[list[int]]:
        """Positions grouped by key (size, rate), chunked to ``batch_size``, in input order."""
        groups: dict = defaultdict(list)
        for i, key in enumerate(keys):
            groups[tuple(key)].append(i)
        return [
            positions[j : j + self.batch_size]
            for positions in groups.values()
            for j in range(0, len(positions), self.batch_size)
        ]


def _cells(z: torch.Tensor):
    """``tiled_map``'s reader of a latent (B,C,h,w): the cells [r0,r1) x [c0,c1)."""
    return lambda r0, r1, c0, c1: z[:, :, r0:r1, c0:c1]


def _rows_into(out: torch.Tensor):
    """``tiled_map``'s sink into a preallocated (B,C,H,W) tensor."""

    def sink(y0: int, x0: int, block: torch.Tensor) -> None:
        out[:, :, y0 : y0 + block.shape[2], x0 : x0 + block.shape[3]] = block

    return sink


def measured_bpp(stream: bytes, height: int, width: int) -> float:
    """Bits per pixel of a whole bitstream file (header and CRC included)."""
    return 8 * len(stream) / (height * width)
