"""Shards of good samples mixed with every bad kind the project knows, and their oracle.

Used by the property-based test (``tests/pipeline/test_nothing_lost.py``: a few examples in
``make test``, hundreds in ``make soak``) and by the soak's Ray jobs
(``tests/fuzz/soak_pipeline.py``). ``build_shard(kinds, seed, fault)`` returns a tar and,
for every record the reader will make of it (in shard order: record i is the row with
``index_in_shard`` i), what must become of it. ``check`` compares that with a shard's
Parquet rows, its decoded tar and its ``.errors`` listing and returns every violation of
"nothing lost": each record is one row; each row is either in the decoded output, with
every carried field byte for byte, or in the listing, never both, never neither; fallbacks
and renames are listed exactly where they happen. The oracle is written from the rules in
the docs, not from the pipeline's code (it never calls it).

The kinds (one sample each):

    good            an image (PNG/JPEG/WebP; RGB, grey, RGBA, palette, 16-bit, CMYK) + fields
    non_utf8_name   key ``d\\xfcr/caf\\xe9-NNN``: bytes that are not UTF-8, in a dir too
    non_utf8_field  a carried field named ``t\\xe9xt``
    binary_field    a carried field of bytes that are not UTF-8
    clash           ``k.jpg`` image + ``k.png`` mask: the mask keeps its name on decode
    wide            16400x2 px: WebP cannot hold it, decode falls back to PNG
    corrupt         a JPEG with 64 garbage bytes (may or may not still decode)
    zero            a zero-byte image
    text            a text payload under ``.jpg``
    random          random bytes under ``.png``
    bomb            a PNG header declaring 20000x20000
    over_limit      a real 256x256 image over ``MAX_PIXELS``
    no_image        a caption only
    unsafe_key      ``../up-NNN``, ``/abs-NNN``, ``a/../b-NNN``: encoded, refused on decode
    control_key     a key with a control character: encoded, refused on decode
    link            a symlink member
    hidden          ``.hidden-NNN.png``: an empty key
    dup_key         a key seen earlier in the shard (not adjacent): the repeat is an error
    dup_field       one field twice in a sample

and the shard-level faults: None, ``truncated_last`` (the tar ends inside its last member)
and ``no_eoa`` (no end-of-archive marker: one more record, ``__tar_stream__``).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.pipeline.shards import image_bytes, png_with_size, tar_bytes

MAX_PIXELS = 40_000  # the worker's limit: over_limit (256x256) is over it, wide is not
WIDE = (2, 16400)  # (height, width): over WebP's 16383 px a side
SIZES = [(32, 48), (48, 64), (40, 40)]  # (height, width) of the small images
# (Pillow format, mode, extension) of the good images
GOOD_FORMS = [
    ("PNG", "RGB", "png"),
    ("PNG", "L", "png"),
    ("PNG", "RGBA", "png"),
    ("PNG", "P", "png"),
    ("PNG", "I;16", "png"),
    ("JPEG", "RGB", "jpg"),
    ("JPEG", "CMYK", "jpg"),
    ("WEBP", "RGB", "webp"),
]
KINDS = (
    "good",
    "non_utf8_name",
    "non_utf8_field",
    "binary_field",
    "clash",
    "wide",
    "corrupt",
    "zero",
    "text",
    "random",
    "bomb",
    "over_limit",
    "no_image",
    "unsafe_key",
    "control_key",
    "link",
    "hidden",
    "dup_key",
    "dup_field",
)
FAULTS = (None, "truncated_last", "no_eoa")
FORMATS = ("png", "jpg", "webp")
STREAM_KEY = b"__tar_stream__"
RENAMED_STEM = b"oscar"  # docs: the image takes oscar.<ext> when a carried field has <ext>


@dataclass
class Record:
    """What must become of one record of a shard."""

    kind: str
    key: bytes  # exact key bytes
    encode_ok: bool | None  # ok row / error row; None: either (a corrupted JPEG)
    writable: bool = True  # False: decode must refuse the key (an error note)
    fields: dict[bytes, bytes] = field(default_factory=dict)  # carried: name -> bytes
    size: tuple[int, int] | None = None  # (width, height) of the image, when known
    wide: bool = False


@dataclass
class ShardBuild:
    tar: bytes
    records: list[Record]
    members: list[tuple[bytes, bytes | None]]  # what went into the tar, for messages


def _image(rng: np.random.Generator, h: int, w: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    return image_bytes(h, w, seed=int(rng.integers(1 << 30)), fmt=fmt, mode=mode)


def _sample(
    kind: str, i: int, rng: np.random.Generator, earlier: list[Record]
) -> tuple[list[tuple[bytes, bytes | None]], Record]:
    """One sample of ``kind`` (the i-th of its shard): its tar members and its record."""
    key = b"k%03d" % i
    h, w = SIZES[int(rng.integers(len(SIZES)))]
    caption = (b"txt", f"caption {i} \u00e9".encode())
    if kind == "dup_key":
        # a key at least two records back: the one just before would merge with this one
        before = earlier[-1].key if earlier else None
        candidates = [r.key for r in earlier if r.kind != "hidden" and r.key != before]
        if not candidates:
            kind = "good"
        else:
            key = candidates[int(rng.integers(len(candidates)))]
            return [(key + b".png", _image(rng, h, w))], Record(kind, key, False)
    if kind == "good":
        fmt, mode, ext = GOOD_FORMS[int(rng.integers(len(GOOD_FORMS)))]
        fields = dict([caption, (b"json", b'{"i": %d}' % i)])
        members = [(key + b"." + ext.encode(), _image(rng, h, w, fmt, mode))]
        members += [(key + b"." + n, d) for n, d in fields.items()]
        return members, Record(kind, key, True, fields=fields, size=(w, h))
    if kind in ("non_utf8_name", "non_utf8_field", "binary_field"):
        extra = {
            "non_utf8_name": caption,
            "non_utf8_field": (b"t\xe9xt", b"a field whose name is not UTF-8"),
            "binary_field": (b"bin", b"\xff\xfe\x00" + rng.bytes(int(rng.integers(1, 64)))),
        }[kind]
        if kind == "non_utf8_name":
            key = b"d\xfcr/caf\xe9-%03d" % i
        fields = dict([extra])
        members = [(key + b".jpg", _image(rng, h, w, "JPEG"))]
        members += [(key + b"." + n, d) for n, d in fields.items()]
        return members, Record(kind, key, True, fields=fields, size=(w, h))
    if kind == "clash":
        fields = {b"png": _image(rng, h, w, "PNG", "L"), b"txt": caption[1]}
        members = [(key + b".jpg", _image(rng, h, w, "JPEG"))]
        members += [(key + b"." + n, d) for n, d in fields.items()]
        return members, Record(kind, key, True, fields=fields, size=(w, h))
    if kind == "wide":
        data = image_bytes(*WIDE, seed=i, fmt="PNG", compress_level=1)
        return [(key + b".png", data)], Record(kind, key, True, size=WIDE[::-1], wide=True)
    if kind == "corrupt":
        buf = bytearray(_image(rng, h, w, "JPEG"))
        at = int(rng.integers(len(buf) // 4, len(buf)))
        buf[at : at + 64] = rng.bytes(64)
        fields = dict([caption])
        members = [(key + b".jpg", bytes(buf)), (key + b".txt", caption[1])]
        return members, Record(kind, key, None, fields=fields)  # size: the header may be hit
    if kind in ("unsafe_key", "control_key"):
        if kind == "control_key":
            key = b"ctl\x01-%03d" % i
        else:
            key = [b"../up-%03d", b"/abs-%03d", b"a/../b-%03d"][int(rng.integers(3))] % i
        fields = dict([caption])
        members = [(key + b".png", _image(rng, h, w)), (key + b".txt", caption[1])]
        return members, Record(kind, key, True, writable=False, fields=fields, size=(w, h))
    if kind == "hidden":
        name = b".hidden-%03d.png" % i
        return [(name, _image(rng, h, w))], Record(kind, name, False)
    if kind == "dup_field":
        members = [(key + b".png", _image(rng, h, w)), (key + b".txt", b"a"), (key + b".txt", b"b")]
        return members, Record(kind, key, False)
    bad: dict[str, tuple[bytes, bytes | None]] = {
        "zero": (b"png", b""),
        "text": (b"jpg", b"this is not an image"),
        "random": (b"png", rng.bytes(int(rng.integers(1, 2048)))),
        "bomb": (b"png", png_with_size(20000, 20000)),
        "over_limit": (b"png", _image(rng, 256, 256)),
        "no_image": (b"txt", b"a caption without an image"),
        "link": (b"png", None),
    }
    ext, data = bad[kind]
    return [(key + b"." + ext, data)], Record(kind, key, False)


def build_shard(kinds: list[str], seed: int, fault: str | None = None) -> ShardBuild:
    """A tar of one sample per entry of ``kinds`` (in order), with the shard-level
    ``fault`` (see the module docstring), and its records."""
    rng = np.random.default_rng(seed)
    members: list[tuple[bytes, bytes | None]] = []
    records: list[Record] = []
    for i, kind in enumerate(kinds):
        sample_members, record = _sample(kind, i, rng, records)
        members += sample_members
        records.append(record)
    fmt = tarfile.GNU_FORMAT if rng.random() < 0.5 else tarfile.PAX_FORMAT
    tar = tar_bytes(members, format=fmt)
    last = members[-1][1] if members else None
    if fault == "truncated_last" and last is not None and len(last) >= 2:
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            data_at = tf.getmembers()[-1].offset_data
        tar = tar[: data_at + len(last) // 2]  # cut inside its data
        records[-1].encode_ok = False
    elif fault == "no_eoa":
        end = len(tar) - 1024  # drop the two zero blocks ...
        while end >= 512 and tar[end - 512 : end] == b"\0" * 512:  # ... and the padding
            end -= 512
        tar = tar[:end]
        records.append(Record("no_eoa", STREAM_KEY, False))
    return ShardBuild(tar, records, members)


# ------------------------------------------------------------------------------ oracle


def _key_of(name: bytes) -> tuple[bytes, bytes]:
    """WebDataset's rule on bytes: ``dir/stem.ext.more`` -> (``dir/stem``, ``ext.more``)."""
    head, _, base = name.rpartition(b"/")
    stem, _, ext = base.partition(b".")
    return (head + b"/" + stem if head else stem), ext


def read_tar(data: bytes) -> list[tuple[bytes, bytes]]:
    """(exact name bytes, data) of every member of a decoded tar, in order."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf:
            f = tf.extractfile(m)
            out.append((m.name.encode("utf-8", "surrogateescape"), f.read() if f else b""))
    return out


def check(
    records: list[Record],
    rows: list[dict[str, Any]],
    output: list[tuple[bytes, bytes]],
    notes: list[dict[str, Any]],
    fmt: str,
) -> list[str]:
    """Every violation of "nothing lost" for one shard (empty: none).

    ``rows``: the Parquet's rows (``index_in_shard``, ``key``, ``key_bytes``, ``status``);
    ``output``: the decoded tar's members (``read_tar``); ``notes``: the ``.errors``
    listing's objects (``index_in_shard``, ``key``, ``kind``, ``reason``); ``fmt``: the
    decode's ``--format``.
    """
    problems: list[str] = []
    indexes = [r["index_in_shard"] for r in rows]
    if indexes != list(range(len(records))):
        return [f"Parquet rows have index_in_shard {indexes}, expected 0..{len(records) - 1}"]
    written: dict[bytes, dict[bytes, bytes]] = {}
    for name, data in output:
        key, ext = _key_of(name)
        if ext in written.setdefault(key, {}):
            problems.append(f"output: {name!r} twice")
        written[key][ext] = data
    by_index: dict[int, list[dict[str, Any]]] = {}
    for note in notes:
        by_index.setdefault(note["index_in_shard"], []).append(note)
    if set(by_index) - set(range(len(records))):
        problems.append(f"notes for rows that do not exist: {sorted(set(by_index) - set(indexes))}")
    expected_keys = set()
    for i, (rec, row) in enumerate(zip(records, rows, strict=True)):
        where = f"row {i} ({rec.kind}, key {rec.key!r})"
        kinds = sorted(n["kind"] for n in by_index.get(i, []))
        if row["key_bytes"] != rec.key:
            problems.append(f"{where}: key_bytes {row['key_bytes']!r}")
        if row["key"] != rec.key.decode("utf-8", "backslashreplace"):
            problems.append(f"{where}: key text {row['key']!r}")
        ok = row["status"] == "ok"
        if rec.encode_ok is not None and ok != rec.encode_ok:
            problems.append(f"{where}: status {row['status']}, expected ok={rec.encode_ok}")
        if not ok:
            if kinds != ["encode_error"]:
                problems.append(f"{where}: an error row, listed as {kinds}")
            continue
        if not rec.writable:
            if kinds != ["error"]:
                problems.append(f"{where}: an unsafe key, listed as {kinds} (expected error)")
            continue
        expected_keys.add(rec.key)
        fields = written.get(rec.key)
        if fields is None:
            problems.append(f"{where}: missing from the output (listed as {kinds})")
            continue
        ext = b"png" if rec.wide and fmt == "webp" else fmt.encode()
        image = RENAMED_STEM + b"." + ext if ext in rec.fields else ext
        want = sorted([*rec.fields, image])
        if sorted(fields) != want:
            problems.append(f"{where}: output fields {sorted(fields)}, expected {want}")
            continue
        for name, data in rec.fields.items():
            if fields[name] != data:
                problems.append(f"{where}: carried field {name!r} changed")
        with Image.open(io.BytesIO(fields[image])) as img:
            if img.format != {b"png": "PNG", b"jpg": "JPEG", b"webp": "WEBP"}[ext]:
                problems.append(f"{where}: image {image!r} is {img.format}")
            if rec.size is not None and img.size != rec.size:
                problems.append(f"{where}: image {img.size}, expected {rec.size}")
        want_notes = sorted(
            (["fallback"] if ext != fmt.encode() else []) + (["renamed"] if image != ext else [])
        )
        if kinds != want_notes:
            problems.append(f"{where}: listed as {kinds}, expected {want_notes}")
    extra = set(written) - expected_keys
    if extra:
        problems.append(f"output holds keys no row should have written: {sorted(extra)}")
    return problems
