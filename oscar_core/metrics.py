"""Image quality numbers shared by every report: one PSNR and one MS-SSIM for the project.

Both take two uint8 (H, W, 3) arrays, reference first, and return a float. ``oscar eval``,
``oscar recompress``, ``oscar bench`` and ``oscar demo`` all call these, so the numbers in
their reports agree.
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0  # identical images: a finite stand-in for +inf, so means stay finite


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels, peak 255.

    Convention: capped at ``PSNR_CAP_DB`` (100 dB), which identical images get instead of
    +inf, so that means stay finite and reports stay standard JSON.
    """
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse))


def ms_ssim(ref: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM on RGB (mean over channels), data range 255, the standard 5 scales, in
    float64; ImportError without ``pytorch_msssim`` (the pipeline and eval extras).

    The standard 11-tap window needs a smaller side > 160 px (4 downsamplings). For smaller
    images (tests, thumbnails) the largest odd window that fits is used (down to 3 taps,
    side > 32); such values are not comparable with standard MS-SSIM. Below 33 px: NaN.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    side = min(ref.shape[:2])
    win = next((w for w in (11, 9, 7, 5, 3) if side > (w - 1) * 16), None)
    if win is None:
        return math.nan
    x = torch.from_numpy(np.array(ref)).permute(2, 0, 1)[None].double()  # a writable copy
    y = torch.from_numpy(np.array(test)).permute(2, 0, 1)[None].double()
    return float(_ms_ssim(x, y, data_range=255.0, win_size=win))


def ssimulacra2(ref: np.ndarray, test: np.ndarray) -> float:
    """SSIMULACRA 2 (the ``ssimulacra2`` package, a port of libjxl's tool); ImportError
    without it (the pipeline and eval extras).

    100 = identical, ~90 visually lossless, ~70 high, ~50 medium, ~30 low quality; can go
    negative. The package's API reads files, so the arrays go in as in-memory PNGs.
    """
    import io

    from PIL import Image
    from ssimulacra2 import compute_ssimulacra2

    def png(image: np.ndarray) -> io.BytesIO:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG", compress_level=0)
        buf.seek(0)
        return buf

    return float(compute_ssimulacra2(png(ref), png(test)))


# Every metric a quality target may name (higher is better for all three).
METRICS = {"psnr": psnr, "ms-ssim": ms_ssim, "ssimulacra2": ssimulacra2}
