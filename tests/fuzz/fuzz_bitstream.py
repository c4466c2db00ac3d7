"""Fuzz target: the bitstream parser and the entropy decoders may only raise BitstreamError.

    python -m tests.fuzz.fuzz_bitstream [libFuzzer flags] [corpus dir]     (atheris)
    python -m tests.fuzz.fuzz_bitstream --hypothesis -max_total_time=600  (no atheris)
    make fuzz                                    (FUZZ_SECONDS=600, corpus in out/fuzz/)

With atheris installed (the ``dev`` extra) the run is coverage-guided: ``oscar_core``'s
bitstream, entropy, context and codec modules are instrumented, libFuzzer mutates a seed
corpus of real streams (a small image coded at every rate in format 4, and the format-3
golden streams of tests/oscar_core/golden) and prints its own statistics; a failing
input is saved as ``crash-<sha1>`` and the run exits non-zero. Without atheris (or with
``--hypothesis``) the same ``one_input`` is driven by Hypothesis, in batches, until the
time is up: random bytes and mutated seeds. Both print the number of cases run.

The first byte of an input picks what the rest is fed to:

    0  ``Codec.parse(rest)``: a raw stream (magic, lengths and CRC reject most of these);
    1  the bytes after the version byte (a rate nibble first), with magic, version (4, or 3
       when flagged) and the CRC (seeded with this model's id, or a foreign one) made right,
       so the field checks and the entropy decoders (uniform, static, context: byte 10)
       are reached;
    2  ``IndexCoder.decode(payload, count)`` on one rate's coder, count from two bytes;
    3  round trip: indices from the bytes, ``encode`` then ``decode`` must give them back;
    4  ``ContextCoder.decode(payload, h, w)`` on one rate's context model, h and w < 64;
    5  context round trip: an index grid from the bytes, ``encode`` then ``decode``.

Anything but ``BitstreamError`` escaping (or a wrong round trip, or a parsed stream whose
indices are out of range) is a finding.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np

try:  # optional: without it, the Hypothesis fallback below
    import atheris
except ImportError:
    atheris = None

MODES = 6
GOLDEN = Path(__file__).resolve().parents[1] / "oscar_core" / "golden"  # format-3 streams
# Streams declaring more pixels are only header-parsed, to keep each case cheap: a 36-byte
# stream can declare 54735x16597 (Codec.parse refuses it: over its max_pixels, 64 MP), and
# one just under 64 MP would still cost ~1 M indices to decode. Under the context model a
# grid costs ~2 us per index plus ~0.1 ms per wavefront (2 h + w of them: a 48x16403 image
# at rate 3 has 1030), so the cap is 0.25 MP: at most ~50 ms per case.
MAX_PIXELS = 250_000
# Per-case bounds (the Hypothesis driver checks both; libFuzzer gets -timeout and
# -malloc_limit_mb from `make fuzz`): no hang, and no allocation beyond a fixed cap.
CASE_SECONDS = 5.0
CASE_BYTES = 256 * 2**20  # peak traced (Python + numpy) allocation of one case
_codec = None
cases = 0  # inputs run by this process


def _load(instrument: bool = False) -> None:
    """Import the code under test; instrumented for atheris when ``instrument``.

    Only ``python -m`` with atheris instruments (``run_atheris``), never an import from
    pytest, so the rest of a test session runs plain bytecode.
    """
    global bitstream, Codec, MAX_SYMBOLS, BitstreamError
    under_test = [
        "oscar_core.bitstream",
        "oscar_core.entropy",
        "oscar_core.context",
        "oscar_core.context_coder",
        "oscar_core.codec",
    ]
    ctx = atheris.instrument_imports(include=under_test) if instrument else nullcontext()
    with ctx:
        from oscar_core import bitstream
        from oscar_core.codec import Codec
        from oscar_core.entropy import MAX_SYMBOLS
        from oscar_core.errors import BitstreamError


def codec():  # noqa: ANN201 - an oscar_core.Codec
    """The shipped model, loaded once (only its ids, ladder and entropy coders are used).
    It has a context model (``context.safetensors``), so every decoder is reachable."""
    global _codec
    if _codec is None:
        if "Codec" not in globals():  # not loaded by run_atheris: plain imports
            _load()
        _codec = Codec.from_pretrained()
        if _codec.model.context is None:
            raise RuntimeError("the shipped model has no context model: run oscar fit-context")
    return _codec


def _context_coder(rate_byte: int):  # noqa: ANN202 - an oscar_core.context_coder.ContextCoder
    c = codec()
    return c.stream_coder(rate_byte % len(c.ladder)).coders[bitstream.ProbabilityModel.CONTEXT]


def _fixed_up(rest: bytes) -> bytes:
    """``rest`` (flags, then a rate byte, then the bytes after the version byte) inside a
    stream with the right magic, version and CRC, the CRC seeded with this model's id or a
    foreign one: the field checks and the entropy decoders are reached. Layout assumed
    (format 4): ``magic | version << 4 | rate | H (2) | W (2) | RMS (4) | model | ...`` and a
    CRC-32 trailer over ``model id + body``; flag 4: format 3 (no model byte, the CRC under
    the base model id).
    """
    c = codec()
    head = rest[0] if rest else 0
    tail = bytearray(rest[1:] or b"\0")
    version = 3 if head & 4 else bitstream.VERSION
    own = c.model_id if version == bitstream.VERSION else c.base_model_id
    model_id = own if head & 1 else bytes(b ^ 0xFF for b in own)
    rate = tail[0] & 0x0F
    if head & 2 and len(tail) >= 5:  # a rate on the ladder and a small image
        h, w = struct.unpack_from(">HH", tail, 1)
        rate %= len(c.ladder)
        struct.pack_into(">HH", tail, 1, 1 + h % 512, 1 + w % 512)
        if version == bitstream.VERSION and len(tail) >= 10:
            tail[9] %= 4  # mostly a known probability model (3: reserved)
    body = bitstream.MAGIC + bytes([version << 4 | rate]) + bytes(tail[1:])
    return body + struct.pack(">I", zlib.crc32(body, zlib.crc32(model_id)))


def _check_parsed(parsed) -> None:  # noqa: ANN001
    idx = parsed.indices
    K = codec().coder(parsed.rate.index).K
    assert idx.ndim == 2 and idx.dtype == np.int64, (idx.shape, idx.dtype)
    assert idx.size == 0 or (idx.min() >= 0 and idx.max() < K), "index outside the codebook"


def one_input(data: bytes) -> str:
    """Run one input; returns "ok", "big" (header only, see MAX_PIXELS) or "rejected"
    (BitstreamError). Anything else raises."""
    global cases
    cases += 1
    mode, rest = (data[0] % MODES, data[1:]) if data else (0, b"")
    c = codec()
    try:
        if mode in (0, 1):
            stream = rest if mode == 0 else _fixed_up(rest)
            header, _ = bitstream.unpack(stream, c.model_id, c.base_model_id)
            if header.height * header.width > MAX_PIXELS:
                return "big"  # legal, but decoding it costs ~50 bytes of RAM per pixel
            _check_parsed(c.parse(stream))
        elif mode == 2:
            coder = c.coder((rest[:1] or b"\0")[0] % len(c.ladder))
            count = int.from_bytes(rest[1:3].ljust(2, b"\0"), "big")
            out = coder.decode(rest[3:], count)
            assert out.shape == (count,) and (count == 0 or 0 <= out.min() <= out.max() < coder.K)
        elif mode == 3:
            coder = c.coder((rest[:1] or b"\0")[0] % len(c.ladder))
            body = rest[1:]
            x = np.frombuffer(body[: len(body) // 2 * 2], ">u2").astype(np.int64) % coder.K
            x = x[:MAX_SYMBOLS]
            back = coder.decode(coder.encode(x), x.size)
            assert np.array_equal(back, x), "entropy round trip changed the indices"
        elif mode == 4:
            coder = _context_coder((rest[:1] or b"\0")[0])
            h, w = (v % 64 for v in rest[1:3].ljust(2, b"\0"))
            out = coder.decode(rest[3:], h, w)
            assert out.shape == (h, w) and (out.size == 0 or 0 <= out.min() <= out.max() < coder.K)
        else:
            coder = _context_coder((rest[:1] or b"\0")[0])
            w = 1 + (rest[1:2] or b"\0")[0] % 32
            body = rest[2:]
            x = np.frombuffer(body[: len(body) // 2 * 2], ">u2").astype(np.int64) % coder.K
            x = x[: x.size // w * w].reshape(-1, w)
            back = coder.decode(coder.encode(x), *x.shape)
            assert np.array_equal(back, x), "context round trip changed the indices"
    except BitstreamError:
        return "rejected"
    return "ok"


def seeds() -> list[bytes]:
    """Real streams (a 48x64 image at every rate; the format-3 golden streams, re-sealed)
    as mode-0 and mode-1 inputs."""
    c = codec()
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    out = []
    for rate in range(len(c.ladder)):
        (stream,) = c.compress([img], rate)
        out.append(b"\0" + stream)
        # mode 1, this model's id, the rate, then H, W, RMS, the model byte and the payload
        out.append(b"\1\1" + bytes([stream[1] & 0x0F]) + stream[2:-4])
    for path in sorted(GOLDEN.glob("format3-*.oscar")):
        # flags 1 | 4: format 3 under this model's base id (the previous shipped model wrote
        # them), so mode 0 sees them re-sealed, as a stream of this model
        stream = path.read_bytes()
        rest = b"\5" + bytes([stream[1] & 0x0F]) + stream[2:-4]
        out.append(b"\0" + _fixed_up(rest))
        out.append(b"\1" + rest)
    return out


# ------------------------------------------------------------------------- runners


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = int(rng.integers(0, 4))
        if op == 0 and b:  # flip a byte
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        elif op == 1 and b:  # truncate
            del b[int(rng.integers(1, len(b) + 1)) :]
        elif op == 2:  # insert random bytes
            at = int(rng.integers(0, len(b) + 1))
            b[at:at] = rng.bytes(int(rng.integers(1, 9)))
        elif b:  # keep the mode byte, change the mode
            b[0] = int(rng.integers(0, MODES))
    return bytes(b)


def run_hypothesis(seconds: float, *, log: Callable[[str], None] = print) -> int:
    """Feed ``one_input`` from Hypothesis until ``seconds`` pass; returns the cases run."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    corpus = seeds()
    start, n0 = time.monotonic(), cases
    inputs = st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda s, seed: _mutate(np.random.default_rng(seed), s),
            st.sampled_from(corpus),
            st.integers(0, 2**32 - 1),
        ),
    )

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def batch(data: bytes) -> None:
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        one_input(data)
        dt, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
        assert dt < CASE_SECONDS, f"one case took {dt:.1f} s (bound {CASE_SECONDS} s): {data!r}"
        assert peak < CASE_BYTES, f"one case allocated {peak} bytes (cap {CASE_BYTES}): {data!r}"

    for s in corpus:
        assert one_input(s) == "ok", "a seed stream does not parse"
    tracemalloc.start()  # numpy reports its buffers to tracemalloc too
    next_log = 10.0
    while (elapsed := time.monotonic() - start) < seconds:
        batch()
        if elapsed >= next_log:
            log(f"fuzz_bitstream: {cases - n0} cases in {elapsed:.0f} s")
            next_log *= 2
    elapsed = time.monotonic() - start
    tracemalloc.stop()
    n = cases - n0
    log(
        f"fuzz_bitstream (hypothesis): {n} cases in {elapsed:.1f} s ({n / elapsed:.0f}/s), none failed"
    )
    return n


def run_atheris(argv: list[str]) -> None:
    """libFuzzer's main loop (never returns). Seeds go into the first corpus directory."""
    _load(instrument=True)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [os.path.join("out", "fuzz", "corpus")]
        argv = [*argv, dirs[0]]
    os.makedirs(dirs[0], exist_ok=True)
    for i, s in enumerate(seeds()):
        with open(os.path.join(dirs[0], f"seed-{i:02d}"), "wb") as f:
            f.write(s)
    t0 = time.monotonic()

    def target(data: bytes) -> None:
        one_input(data)
        if cases & (cases - 1) == 0 and cases >= 1024:  # powers of two
            dt = time.monotonic() - t0
            print(f"fuzz_bitstream: {cases} cases in {dt:.0f} s ({cases / dt:.0f}/s)", flush=True)

    atheris.Setup(argv, target)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    if atheris is not None and "--hypothesis" not in argv:
        run_atheris(argv)
        return 0
    seconds = 600.0
    for a in argv[1:]:
        if a.startswith("-max_total_time="):
            seconds = float(a.split("=", 1)[1])
    run_hypothesis(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
