"""The reading stages on in-memory tars: grouping, carried fields, damage, image modes, limits.

Every test reads through ``NonSeekable``: the stages must work on a plain forward stream
(an S3 body), never seeking back.
"""

from __future__ import annotations

import base64
import io
import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from pipeline.samples import (
    STREAM_ERROR_KEY,
    Sample,
    carry_field,
    decode_samples,
    group_by_key,
    read_samples,
    restore_field,
    split_name,
    tar_members,
)
from tests.pipeline.shards import (
    NonSeekable,
    corrupt_header,
    exif_rotated_jpeg,
    image_bytes,
    png_with_size,
    tar_bytes,
    truncate_in_member,
)


def read(tar: bytes, **kw) -> list[Sample]:
    return list(read_samples(NonSeekable(tar), **kw))


def summary(samples: list[Sample]) -> list[tuple[str, int, bool]]:
    return [(s.key, s.index, s.ok) for s in samples]


def good_entries(n: int = 3) -> list[tuple[str, bytes]]:
    entries = []
    for i in range(n):
        entries += [
            (f"dir/{i:04d}.jpg", image_bytes(64, 96, seed=i, fmt="JPEG")),
            (f"dir/{i:04d}.json", json.dumps({"i": i}).encode()),
            (f"dir/{i:04d}.txt", f"caption {i} \u00e9".encode()),
        ]
    return entries


def test_split_name_is_webdataset_rule():
    assert split_name("a/b/000123.seg.png") == ("a/b/000123", "seg.png")
    assert split_name("./x.JPG") == ("x", "jpg")
    assert split_name("noext") == ("noext", "")


def test_good_shard_groups_keys_and_carries_fields():
    samples = read(tar_bytes(good_entries(3) + [("dir/0003.png", image_bytes(80, 112))]))
    assert summary(samples) == [(f"dir/{i:04d}", i, True) for i in range(4)]
    s0 = samples[0]
    assert s0.image.shape == (64, 96, 3) and s0.image.dtype == np.uint8
    assert (s0.image_ext, s0.source_format, s0.source_mode, s0.source_frames) == (
        "jpg",
        "JPEG",
        "RGB",
        1,
    )
    assert s0.metadata == {"json": '{"i": 0}', "txt": "caption 0 \u00e9"}
    assert len(s0.source_sha256) == 64 and s0.source_bytes > 0
    assert samples[3].metadata == {}


def test_gzipped_shard():
    assert [s.ok for s in read(tar_bytes(good_entries(2), gzip=True))] == [True, True]


def test_binary_fields_round_trip_as_base64():
    blob = bytes(range(256))
    (s,) = read(tar_bytes([("k.png", image_bytes(64, 64)), ("k.npy", blob), ("k.cls", b"7")]))
    assert s.metadata["cls"] == "7"
    assert s.metadata["npy"] == {"base64": base64.b64encode(blob).decode()}
    assert restore_field(s.metadata["npy"]) == blob
    assert restore_field(carry_field(b"text")) == b"text"


def test_truncated_member_ends_stream_with_error_record():
    tar = tar_bytes(good_entries(3))
    samples = read(truncate_in_member(tar, "dir/0002.jpg"))
    assert summary(samples) == [
        ("dir/0000", 0, True),
        ("dir/0001", 1, True),
        ("dir/0002", 2, False),
    ]
    assert "unexpected end of data" in samples[2].error


def test_corrupt_tar_tail_is_an_error_record_not_silence():
    tar = tar_bytes(good_entries(3))
    samples = read(corrupt_header(tar, "dir/0002.jpg"))
    assert summary(samples)[:2] == [("dir/0000", 0, True), ("dir/0001", 1, True)]
    assert samples[-1].key == STREAM_ERROR_KEY and "corrupt tar header" in samples[-1].error


def test_missing_end_of_archive_marker_is_reported():
    tar = tar_bytes(good_entries(2))
    end = len(tar) - 1024  # drop the two zero blocks ...
    while tar[end - 512 : end] == b"\0" * 512:  # ... and the record padding
        end -= 512
    samples = read(tar[:end])
    assert [s.ok for s in samples] == [True, True, False]
    assert "end-of-archive" in samples[-1].error


@pytest.mark.parametrize("payload", [b"", b"not a tar at all" * 100])
def test_unreadable_stream_is_one_error_record(payload):
    (s,) = read(payload)
    assert s.key == STREAM_ERROR_KEY and not s.ok


def test_bad_samples_are_error_records_and_the_stream_goes_on():
    good = image_bytes(64, 64)
    corrupt = bytearray(image_bytes(96, 128, seed=1))
    jpeg = image_bytes(64, 64, fmt="JPEG")
    corrupt[200:400] = b"\x00" * 200  # damaged IDAT: the header parses, decoding fails
    entries = [
        ("a.png", good),
        ("b.png", bytes(corrupt)),
        ("c.jpg", b"%PDF-1.4 this is not an image"),  # non-image under an image extension
        ("d.jpg", b""),  # zero-byte image
        ("e.txt", b"caption without image"),
        ("f.jpg", jpeg[: len(jpeg) * 2 // 3]),  # truncated JPEG data
        ("g.png", good),
        ("g.txt", b""),  # a zero-byte text field is data (an empty caption)
    ]
    samples = read(tar_bytes(entries))
    by_key = {s.key: s for s in samples}
    assert [s.index for s in samples] == list(range(7))
    assert by_key["a"].ok and by_key["g"].ok and by_key["g"].metadata == {"txt": ""}
    assert "cannot decode" in by_key["b"].error
    assert "not a decodable image" in by_key["c"].error
    assert "empty image (0 bytes)" in by_key["d"].error
    assert by_key["e"].error == "no image field (fields: txt)"
    assert by_key["e"].metadata == {"txt": "caption without image"}
    assert "cannot decode" in by_key["f"].error
    assert by_key["c"].source_bytes == 29  # the failed payload is still accounted for


def test_duplicate_key_and_duplicate_field():
    img = image_bytes(64, 64)
    entries = [("a.png", img), ("b.png", img), ("a.png", img), ("c.png", img), ("c.png", img)]
    samples = read(tar_bytes(entries))
    assert summary(samples) == [("a", 0, True), ("b", 1, True), ("a", 2, False), ("c", 3, False)]
    assert samples[2].error == "duplicate key: first seen at index 0"
    assert "duplicate field 'png'" in samples[3].error


@pytest.mark.parametrize(
    ("data", "mode", "fmt"),
    [
        (image_bytes(70, 90, mode="L"), "L", "PNG"),
        (image_bytes(70, 90, mode="RGBA"), "RGBA", "PNG"),
        (image_bytes(70, 90, mode="P"), "P", "PNG"),
        (image_bytes(70, 90, mode="I;16"), "I;16", "PNG"),
        (image_bytes(70, 90, fmt="JPEG", mode="CMYK"), "CMYK", "JPEG"),
        (image_bytes(70, 90, fmt="WEBP"), "RGB", "WEBP"),
    ],
    ids=["gray", "rgba", "palette", "png16", "cmyk-jpeg", "webp"],
)
def test_colour_modes_become_rgb(data, mode, fmt):
    (s,) = read(tar_bytes([("k.png", data)]))
    assert s.ok, s.error
    assert (s.source_mode, s.source_format) == (mode, fmt)
    assert s.image.shape == (70, 90, 3) and s.image.dtype == np.uint8
    if mode == "I;16":  # 16-bit scaled to 8 bits, not clipped to white
        assert 20 < s.image.mean() < 235


def test_exif_orientation_is_applied():
    (s,) = read(tar_bytes([("k.jpg", exif_rotated_jpeg(64, 96, orientation=6))]))
    assert s.image.shape == (96, 64, 3)  # stored 96 wide x 64 high, shown rotated


def test_animation_uses_first_frame_and_records_frame_count():
    frames = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (10, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    (s,) = read(tar_bytes([("anim.gif", buf.getvalue())]))
    assert s.ok and s.source_frames == 3
    assert abs(int(s.image.mean()) - 10) <= 2


def test_decompression_bomb_rejected_from_the_header():
    # 9000 x 9000 = 81 MP: over our 64 MP default, under Pillow's own bomb limits.
    samples = read(
        tar_bytes([("big.png", png_with_size(9000, 9000)), ("ok.png", image_bytes(8, 8))])
    )
    assert "too many pixels: 9000x9000 = 81000000" in samples[0].error
    assert samples[1].ok
    # A configurable limit; and a header past Pillow's own hard limit is an error too.
    (small,) = read(tar_bytes([("k.png", image_bytes(64, 64))]), max_pixels=1000)
    assert "exceeds max_pixels = 1000 " in small.error
    (huge,) = read(tar_bytes([("k.png", png_with_size(60000, 60000))]))
    assert "decompression bomb" in huge.error


def test_member_size_limit():
    samples = read(
        tar_bytes([("a.png", image_bytes(64, 64)), ("b.png", image_bytes(64, 64))]),
        max_member_bytes=100,
    )
    assert all("member too large" in s.error for s in samples)


def test_stages_compose_on_plain_lists():
    # Each stage is a plain generator: usable on its own, as the tests of webdataset do.
    members = list(tar_members(NonSeekable(tar_bytes(good_entries(2)))))
    assert [m.name for m in members][:2] == ["dir/0000.jpg", "dir/0000.json"]
    raws = list(group_by_key(members))
    assert [sorted(r.fields) for r in raws] == [["jpg", "json", "txt"]] * 2
    assert all(s.ok for s in decode_samples(raws))


def test_streaming_keeps_memory_flat():
    # A 48 MiB shard of 1 MiB members: the stages hold one member (and its sample) at a time.
    payload = bytes(range(256)) * 4096
    tar = tar_bytes([(f"k{i:03d}.bin", payload) for i in range(48)])
    stream = NonSeekable(tar)
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_samples(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 48
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB for a 48 MiB shard"
