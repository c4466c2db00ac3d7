"""OSCAR: one-step diffusion codec across multiple bit-rates (Guo et al., 2025).

``from oscar_core import Codec``; see ``codec.py`` for the contract and ``bitstream.py`` for
the file format.
"""

import warnings

# compressai and vector-quantize-pytorch script helpers with the deprecated torch.jit at import
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from .codec import DEFAULT_MODEL_DIR, Codec, measured_bpp
from .config import OscarConfig
from .errors import BitstreamError
from .ladder import Rate, RateLadder
from .model import OscarModel
from .precision import PRECISIONS
from .registry import available_configs, get_config

__version__ = "0.1.0"
CODEC_VERSION = __version__

__all__ = [
    "BitstreamError",
    "CODEC_VERSION",
    "Codec",
    "DEFAULT_MODEL_DIR",
    "OscarConfig",
    "OscarModel",
    "PRECISIONS",
    "Rate",
    "RateLadder",
    "available_configs",
    "get_config",
    "measured_bpp",
]
