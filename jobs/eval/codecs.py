"""Classic image codecs for ``oscar eval``, and the search for a quality at a target bpp.

Every codec goes through Pillow (and its plugins), so one adapter shape serves all of them:
``encode(image, quality) -> bytes`` and ``decode(bytes) -> (H, W, 3) uint8``. Settings are
fixed here, not on the command line, so that two eval runs are comparable:

- ``jpeg``: Pillow/libjpeg, 4:2:0, standard tables, quality 1..100.
- ``webp``: Pillow/libwebp lossy, method 4 (the default), quality 0..100.
- ``avif``: Pillow's built-in libavif (aom), speed 6 (the default), 4:2:0, one thread
  (the machine is shared; single-threaded timings compare with OSCAR's), quality 0..100.
- ``jxl``: ``pillow-jxl-plugin`` (libjxl), effort 7 (the default), one thread, quality
  0..99 (100 would be lossless).
- ``heic``: ``pillow-heif`` (libheif + x265, HEVC intra: the stand-in for BPG), 4:2:0,
  quality 0..100.

Bits per pixel always count every byte of the file (container and headers included) over
the pixels of the ORIGINAL image, also for the downscaled variants (``avif@1/2``): those
code a Lanczos-downscaled image and are upscaled back (Lanczos) before measuring, the
usual way to reach rates below a codec's lowest quality setting.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class ClassicCodec:
    """One codec at fixed settings; ``quality`` is its native integer knob (higher = more bits)."""

    name: str
    pil_format: str
    q_min: int
    q_max: int
    options: dict = field(default_factory=dict)

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        if not self.q_min <= quality <= self.q_max:
            raise ValueError(
                f'Invalid quality "{quality}" for {self.name}, should be in [{self.q_min}, {self.q_max}]'
            )
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, self.pil_format, quality=int(quality), **self.options)
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))


CODECS: dict[str, ClassicCodec] = {
    "jpeg": ClassicCodec("jpeg", "JPEG", 1, 100, {"subsampling": "4:2:0"}),
    "webp": ClassicCodec("webp", "WEBP", 0, 100, {"method": 4}),
    "avif": ClassicCodec(
        "avif", "AVIF", 0, 100, {"speed": 6, "subsampling": "4:2:0", "max_threads": 1}
    ),
    # JXL quality 100 is distance 0, which libjxl accepts only as lossless: stop at 99
    "jxl": ClassicCodec("jxl", "JXL", 0, 99, {"effort": 7, "num_threads": 1}),
    "heic": ClassicCodec("heic", "HEIF", 0, 100, {"chroma": 420}),
}

DEFAULT_CODECS = tuple(CODECS)

# what to install when a codec's plugin is missing
_PLUGIN_HINT = {
    "jxl": "pip install pillow-jxl-plugin (or: pip install -e '.[eval]')",
    "heic": "pip install pillow-heif (or: pip install -e '.[eval]')",
    "avif": "needs Pillow >= 11.2 built with libavif",
    "webp": "Pillow was built without libwebp",
    "jpeg": "Pillow was built without libjpeg",
}


def _register_plugin(name: str) -> None:
    """Import the Pillow plugin that adds a format (import errors propagate)."""
    if name == "jxl":
        import pillow_jxl

        if "JXL" not in Image.SAVE:  # importing the plugin registers the format
            raise ImportError(f"{pillow_jxl.__name__} did not register JXL with Pillow")
    elif name == "heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    elif name in ("jpeg", "webp", "avif"):
        feature = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[name]
        if not features.check(feature):
            raise ImportError(f"Pillow {Image.__version__} has no {name} support")


@functools.cache
def availability(name: str) -> str | None:
    """None when ``name`` works here, else the reason it does not (with the fix).

    The check is a real round trip of a small image at mid quality, not only an import:
    a plugin can import and still lack its encoder (pillow-heif without x265, say).
    """
    if name not in CODECS:
        return f'unknown codec "{name}", known: {", ".join(CODECS)}'
    try:
        _register_plugin(name)
        codec = CODECS[name]
        probe = np.zeros((16, 16, 3), np.uint8)
        probe[:, 8:] = 200
        out = codec.decode(codec.encode(probe, (codec.q_min + codec.q_max) // 2))
        if out.shape != probe.shape:
            return f"round trip changed the size {probe.shape} -> {out.shape}"
    except Exception as exc:  # any failure means "not usable here": report why
        return f"{type(exc).__name__}: {exc} ({_PLUGIN_HINT[name]})"
    return None


def get_codec(name: str) -> ClassicCodec:
    """The adapter for ``name``; ValueError with the reason if it is unknown or unavailable."""
    reason = availability(name)
    if reason is not None:
        raise ValueError(f"codec {name}: {reason}")
    return CODECS[name]


def select_codecs(names: list[str] | None) -> tuple[dict[str, ClassicCodec], list[str]]:
    """name -> codec, plus notes. Codecs asked for by name must all work (ValueError with the
    reason otherwise); from the default list, those missing here are skipped with a note."""
    if names is not None:
        return {n: get_codec(n) for n in names}, []
    usable, notes = {}, []
    for n in DEFAULT_CODECS:
        reason = availability(n)
        if reason is None:
            usable[n] = CODECS[n]
        else:
            notes.append(f"{n}: skipped ({reason})")
    return usable, notes


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of a uint8 (H, W, 3) array (Pillow's, in 8-bit sRGB like the codecs)."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def variant_name(codec: str, scale: int) -> str:
    """``avif`` for the full-size image, ``avif@1/2`` for the 2x downscaled one, ..."""
    return codec if scale == 1 else f"{codec}@1/{scale}"


@dataclass(frozen=True)
class Encoded:
    """One encode in a quality table: its bytes and what they cost."""

    quality: int
    data: bytes
    bpp: float  # over the original image's pixels
    enc_ms: float  # encoder (plus the downscale for a variant)


class QualityTable:
    """quality -> Encoded for one (image, codec, scale), filled lazily and kept.

    The search for every OSCAR rate point of an image reuses it, so each quality is encoded
    at most once per image; only bytes are kept (decoding is cheap and done on demand), so a
    table costs kilobytes, not one decoded image per quality tried.
    """

    def __init__(self, codec: ClassicCodec, image: np.ndarray, scale: int = 1):
        if scale < 1:
            raise ValueError(f'Invalid scale "{scale}", should be >= 1')
        self.codec, self.scale = codec, scale
        self.height, self.width = image.shape[:2]
        t0 = time.perf_counter()
        if scale == 1:
            self.source = image
        else:
            w, h = max(1, round(self.width / scale)), max(1, round(self.height / scale))
            self.source = resize(image, w, h)
        self._resize_ms = 1000 * (time.perf_counter() - t0)
        self.entries: dict[int, Encoded] = {}

    @property
    def name(self) -> str:
        return variant_name(self.codec.name, self.scale)

    def get(self, quality: int) -> Encoded:
        if quality not in self.entries:
            t0 = time.perf_counter()
            data = self.codec.encode(self.source, quality)
            ms = 1000 * (time.perf_counter() - t0) + self._resize_ms
            bpp = 8 * len(data) / (self.height * self.width)
            self.entries[quality] = Encoded(quality, data, bpp, ms)
        return self.entries[quality]

    def decode(self, quality: int) -> tuple[np.ndarray, float]:
        """The decoded image at full size (upscaled for a variant) and the decode time (ms)."""
        t0 = time.perf_counter()
        out = self.codec.decode(self.get(quality).data)
        if out.shape[:2] != (self.height, self.width):
            out = resize(out, self.width, self.height)
        return out, 1000 * (time.perf_counter() - t0)

    def search(self, target_bpp: float) -> Encoded | None:
        """The encode with the largest bpp not above ``target_bpp``; None if even q_min is above.

        Binary search over the integer quality, assuming bpp grows with quality; the bounds
        start from what the table already holds. The answer is then the best of EVERY
        quality tried so far, so a codec whose bpp is not quite monotone (JPEG and WebP
        have small dips) still gets a valid point, never one above the target.
        """
        c = self.codec
        return search_not_above(self.get, c.q_min, c.q_max, target_bpp, self.entries)


def search_not_above(
    get: Callable[[int], Encoded],
    q_min: int,
    q_max: int,
    target_bpp: float,
    known: Mapping[int, Encoded] | None = None,
) -> Encoded | None:
    """Binary search for the highest quality whose bpp <= target (see ``QualityTable.search``).

    ``get(q)`` returns the encode at quality q; ``known`` (quality -> encode, the cache
    ``get`` fills) narrows the first bracket and is searched for the final answer.
    """
    known = known if known is not None else {}
    if get(q_min).bpp > target_bpp:
        return None
    lo = max((q for q, e in known.items() if e.bpp <= target_bpp), default=q_min)
    above = [q for q, e in known.items() if e.bpp > target_bpp and q > lo]
    hi = min(above) if above else q_max
    if not above and get(q_max).bpp <= target_bpp:
        lo = hi = q_max
    while hi - lo > 1:  # invariant: bpp(lo) <= target < bpp(hi)
        mid = (lo + hi) // 2
        if get(mid).bpp <= target_bpp:
            lo = mid
        else:
            hi = mid
    fitting = [e for e in [get(lo), *known.values()] if e.bpp <= target_bpp]
    return max(fitting, key=lambda e: (e.bpp, e.quality))
