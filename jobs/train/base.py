"""The model a training run starts from: the run's own latest checkpoint (a resume), a model
directory (``base`` = a path: refining a trained model), or a fresh model of a registry base
(``oscar-tiny``: random weights; ``oscar-sd21``: SD-2.1's weights, architecture and schedule
from ``sd21_dir``, with LoRA adapters on the UNet).
"""

from __future__ import annotations

from pathlib import Path

from jobs.train.config import TrainConfig
from oscar_core import OscarModel, get_config
from oscar_core.sd21 import load_sd21_weights, sd21_config


def starting_model(config: TrainConfig, checkpoint_dir: Path) -> OscarModel:
    """``checkpoint_dir`` (the latest completed stage's model) when it holds one, else
    ``config.base``: a model directory, or a registry name (``build_base``)."""
    if (checkpoint_dir / "config.json").exists():
        return OscarModel.from_pretrained(checkpoint_dir)
    if Path(config.base).is_dir():
        return OscarModel.from_pretrained(config.base)
    return build_base(config)


def build_base(config: TrainConfig) -> OscarModel:
    """A fresh model of the registry base: ``oscar-sd21`` from the SD-2.1 directory (its
    weights, architecture and schedule, LoRA adapters of ``lora_rank``), else random."""
    if config.base == "oscar-sd21":
        if not config.sd21_dir:
            raise ValueError("base oscar-sd21 needs sd21_dir (CLI: --sd21 DIR)")
        model_config = sd21_config(config.sd21_dir)
    else:
        if config.sd21_dir:
            raise ValueError(f"sd21_dir is for base oscar-sd21, not {config.base!r}")
        model_config = get_config(config.base)
    for key, value in (config.hyper or {}).items():
        if not hasattr(model_config.hyper, key):
            raise ValueError(f'unknown hyper field "{key}" in the training config')
        setattr(model_config.hyper, key, value)
    model = OscarModel(model_config)
    if config.base == "oscar-sd21":
        load_sd21_weights(model, config.sd21_dir)
        model.denoiser.add_lora(config.lora_rank)
    return model
