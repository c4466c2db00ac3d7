"""Fixtures of the codec tests: a tiny random model with a fitted context model."""

from __future__ import annotations

import pytest

from tests.conftest import kodak_crop, smooth_image


def context_training_images() -> list:
    """Small photo-like images to fit a context model on (a few seconds with oscar-tiny)."""
    crop = kodak_crop()
    return [smooth_image(96, 128, seed=40 + s) for s in range(4)] + [crop, crop[:, ::-1]]


@pytest.fixture(scope="session")
def context_model_dir(tmp_path_factory):
    """A model directory: the seeded random ``oscar-tiny`` of ``tiny_codec`` plus a context
    model fitted on ``context_training_images`` (``oscar_core.fitting``)."""
    from oscar_core import Codec
    from oscar_core.fitting import fit_context_model

    directory = tmp_path_factory.mktemp("context-model")
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(directory)
    fit_context_model(directory, context_training_images())
    return directory


@pytest.fixture(scope="session")
def context_codec(context_model_dir):
    from oscar_core import Codec

    return Codec.from_pretrained(context_model_dir)
