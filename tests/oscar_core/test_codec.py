"""Round trips of the tiny codec: sizes, colour modes, determinism, batching, threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oscar_core import BitstreamError, Codec, bitstream
from oscar_core.images import pad_reflect, padded_size, to_tensor
from tests.conftest import smooth_image

H, W = 333, 517  # odd on purpose: padding and cropping must restore it exactly


def encoded_indices(codec: Codec, image: np.ndarray, rate_index: int) -> np.ndarray:
    """The indices the encoder chose, computed directly from the model."""
    ph, pw = padded_size(*image.shape[:2], codec.model.pad_multiple(rate_index))
    with torch.inference_mode():
        z0 = codec.model.autoencoder.encode(pad_reflect(to_tensor([image]), ph, pw))
        return codec.model.hypers[rate_index].encode_indices(z0)[0].numpy()


@pytest.mark.parametrize("rate_index", range(8))
def test_round_trip_every_rate(tiny_codec, rate_index):
    image = smooth_image(H, W, seed=rate_index)
    (stream,) = tiny_codec.compress([image], rate_index)
    assert isinstance(stream, bytes) and len(stream) >= bitstream.MIN_STREAM_BYTES
    parsed = tiny_codec.parse(stream)
    np.testing.assert_array_equal(parsed.indices, encoded_indices(tiny_codec, image, rate_index))
    (decoded,) = tiny_codec.decompress([stream])
    assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
    # bpp is counted from the whole file; the payload is at most the ideal cost plus the
    # coder's seal (a run of index 0 can cost nothing: zeros at the end are not written)
    payload_bits = 8 * (len(stream) - bitstream.MIN_STREAM_BYTES)
    assert payload_bits <= tiny_codec.coder(rate_index).ideal_bits(parsed.indices) + 64


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_colour_modes_become_rgb(tiny_codec, mode):
    rgb = Image.fromarray(smooth_image(45, 71, seed=3))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    else:
        img = rgb.convert(mode)
    streams = tiny_codec.compress([img], 7)
    (decoded,) = tiny_codec.decompress(streams)
    assert decoded.shape == (45, 71, 3)


def test_tiny_and_thin_images(tiny_codec):
    images = [smooth_image(1, 1), smooth_image(1, 200, seed=1), smooth_image(97, 2, seed=2)]
    for rate_index in (0, 7):
        decoded = tiny_codec.decompress(tiny_codec.compress(images, rate_index))
        assert [d.shape for d in decoded] == [(1, 1, 3), (1, 200, 3), (97, 2, 3)]


def test_deterministic_across_runs(tiny_codec):
    image = smooth_image(64, 96, seed=5)
    a = tiny_codec.compress([image], 4)
    b = tiny_codec.compress([image], 4)
    assert a == b
    np.testing.assert_array_equal(tiny_codec.decompress(a)[0], tiny_codec.decompress(b)[0])


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_batch_size_1_vs_4():
    # Another batch size may change oneDNN's blocking and thus float summation order (~1e-6):
    # a pixel near a .5 rounding boundary can move by one 8-bit level, never more.
    one = Codec.from_config("oscar-tiny", seed=0, batch_size=1)
    four = Codec.from_config("oscar-tiny", seed=0, batch_size=4)
    images = [smooth_image(80, 112, seed=s) for s in range(4)]
    streams = four.compress(images, 6)
    for s1, s4 in zip(one.compress(images, 6), streams, strict=True):
        i1, i4 = one.parse(s1).indices, four.parse(s4).indices
        assert (i1 == i4).mean() >= 0.99  # argmax near-ties may flip; usually identical
    for a, b in zip(one.decompress(streams), four.decompress(streams), strict=True):
        assert max_level_diff(a, b) <= 1


def test_threads_1_vs_2(tiny_codec):
    # Thread count changes how reductions are split: same one-level bound as above.
    images = [smooth_image(80, 112, seed=9)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        streams = tiny_codec.compress(images, 3)
        d1 = tiny_codec.decompress(streams)[0]
        torch.set_num_threads(2)
        d2 = tiny_codec.decompress(streams)[0]
    finally:
        torch.set_num_threads(before)
    assert max_level_diff(d1, d2) <= 1


def test_save_and_load_pretrained(tiny_codec, tmp_path):
    tiny_codec.model.save_pretrained(tmp_path / "m")
    loaded = Codec.from_pretrained(tmp_path / "m")
    assert loaded.model_id == tiny_codec.model_id
    image = smooth_image(40, 56)
    stream = tiny_codec.compress([image], 2)
    np.testing.assert_array_equal(loaded.decompress(stream)[0], tiny_codec.decompress(stream)[0])


def test_foreign_model_is_a_clear_error(tiny_codec):
    other = Codec.from_config("oscar-tiny", seed=1)
    stream = other.compress([smooth_image(32, 32)], 0)[0]
    # The model id seeds the CRC: decoding with another model is refused, naming it.
    with pytest.raises(BitstreamError, match=f"model {tiny_codec.model_id.hex()}.*another model"):
        tiny_codec.decompress([stream])
    assert bitstream.crc_matches(stream, other.model_id)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.float32), "not an image"]
)
def test_bad_images_are_clear_errors(tiny_codec, bad):
    with pytest.raises(ValueError, match="image 0"):
        tiny_codec.compress([bad], 0)


def test_huge_declared_image_is_refused_before_any_allocation(tiny_codec):
    # A valid 14-byte stream (correct CRC) may declare 65535x65535 = 4.3 G pixels
    from oscar_core import bitstream

    header = bitstream.Header(tiny_codec.model_id, 0, 65535, 65535, (1.0,) * 4)
    stream = bitstream.pack(header, b"")
    with pytest.raises(
        BitstreamError, match="65535x65535 = 4294836225 exceeds max_pixels = 64000000"
    ):
        tiny_codec.parse(stream)
    small = Codec(tiny_codec.model, max_pixels=100)
    (ok,) = tiny_codec.compress([smooth_image(20, 30)], 0)
    with pytest.raises(BitstreamError, match="30x20 = 600 exceeds max_pixels = 100"):
        small.parse(ok)
    with pytest.raises(ValueError, match="max_pixels"):
        Codec(tiny_codec.model, max_pixels=0)


# ------------------------------------------------------------ the context model (format 4)


def test_context_model_round_trip(context_codec):
    from tests.conftest import kodak_crop

    images = [kodak_crop(), smooth_image(48, 64, seed=11)]
    used = set()
    for rate_index in (0, 3, 7):  # the smallest grid, the largest K, the largest grid
        coder = context_codec.stream_coder(rate_index)
        for image, stream in zip(images, context_codec.compress(images, rate_index), strict=True):
            parsed = context_codec.parse(stream)
            indices = encoded_indices(context_codec, image, rate_index)
            np.testing.assert_array_equal(parsed.indices, indices)  # the indices are unchanged
            model = parsed.header.probability_model
            assert stream[10] == model and parsed.header.version == 4
            payloads = coder.payloads(indices)
            assert stream[11:-4] == payloads[model]
            assert len(payloads[model]) == min(len(p) for p in payloads.values())
            used.add(model)
    assert bitstream.ProbabilityModel.CONTEXT in used  # smooth images: the context model wins


def test_context_model_is_part_of_the_model_id(context_codec, tiny_codec, context_model_dir):
    # the same weights: the same base id; the context model changes the id streams carry
    assert context_codec.base_model_id == tiny_codec.model_id == tiny_codec.base_model_id
    assert context_codec.model_id != context_codec.base_model_id
    (stream,) = context_codec.compress([smooth_image(40, 56)], 5)
    with pytest.raises(BitstreamError, match="another model"):
        tiny_codec.parse(stream)
    # saving keeps it; a model without one removes a stale context.safetensors
    again = Codec.from_pretrained(context_model_dir)
    assert again.model_id == context_codec.model_id


def test_format3_stream_decodes_to_the_same_pixels(context_codec):
    """A format-3 stream (static pmf, CRC under the id without the context model) written by
    the same weights decodes to the indices and pixels of the format-4 stream."""
    image = smooth_image(64, 80, seed=12)
    (s4,) = context_codec.compress([image], 6)
    p4 = context_codec.parse(s4)
    header3 = bitstream.Header(context_codec.base_model_id, 6, 64, 80, p4.header.rms, version=3)
    s3 = bitstream.pack(header3, context_codec.coder(6).encode(p4.indices))
    p3 = context_codec.parse(s3)
    assert (
        p3.header.version == 3 and p3.header.probability_model == bitstream.ProbabilityModel.STATIC
    )
    np.testing.assert_array_equal(p3.indices, p4.indices)
    d3, d4 = context_codec.decompress([s3, s4])
    np.testing.assert_array_equal(d3, d4)


def test_context_coding_is_bit_exact_across_threads_and_batches(context_codec):
    """Same indices -> the same payload bytes whatever the batch size or thread count, and
    decoding (another batch size, another thread count) gives them back exactly."""
    images = [smooth_image(80, 112, seed=30 + s) for s in range(4)]
    one = Codec(context_codec.model, batch_size=1)
    four = Codec(context_codec.model, batch_size=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        s4 = four.compress(images, 7)
        torch.set_num_threads(1)
        s1 = one.compress(images, 7)
        parsed_1 = [one.parse(s) for s in s4]  # decode batch-4 streams in batch 1, 1 thread
    finally:
        torch.set_num_threads(before)
    models = set()
    for a, b, p in zip(s1, s4, parsed_1, strict=True):
        pa, pb = one.parse(a), four.parse(b)
        np.testing.assert_array_equal(p.indices, pb.indices)
        if np.array_equal(pa.indices, pb.indices):  # argmax near-ties may flip an index
            assert pa.header.probability_model == pb.header.probability_model
            assert a[11:-4] == b[11:-4]  # payload bytes
        models.add(pb.header.probability_model)
    assert bitstream.ProbabilityModel.CONTEXT in models
