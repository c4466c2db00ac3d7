"""Cross-process determinism: encode in one process, decode in another with another thread count
and batch size; identical indices, pixels within the one level the codec allows (see codec.py).
The model has a context model: its frequencies, hence the payload bytes of given indices and
the indices decoded from given bytes, are identical in every process (context.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from oscar_core import Codec, bitstream
from tests.conftest import smooth_image

SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from oscar_core import Codec
    mode, model, threads, batch, path = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    codec = Codec.from_pretrained(model, batch_size=int(batch))
    data = np.load(path, allow_pickle=False)
    if mode == "encode":
        images = [data[f"img{i}"] for i in range(4)]
        streams = codec.compress(images, 5)
        np.savez(path, **dict(data), **{f"s{i}": np.frombuffer(s, np.uint8) for i, s in enumerate(streams)})
    else:
        streams = [data[f"s{i}"].tobytes() for i in range(4)]
        decoded = codec.decompress(streams)
        indices = [codec.parse(s).indices for s in streams]
        np.savez(path, **dict(data), **{f"d{i}": d for i, d in enumerate(decoded)},
                 **{f"i{i}": x for i, x in enumerate(indices)})
    """
)


def run(mode: str, model: str, threads: int, batch: int, path: str) -> None:
    subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, model, str(threads), str(batch), path],
        check=True,
        timeout=300,
    )


def test_encode_and_decode_in_other_processes(tmp_path, context_model_dir):
    model = context_model_dir
    codec = Codec.from_pretrained(model, batch_size=1)
    images = {f"img{i}": smooth_image(72, 104, seed=20 + i) for i in range(4)}
    path = str(tmp_path / "data.npz")
    np.savez(path, **images)
    run("encode", str(model), 2, 4, path)  # other process, 2 threads, batch 4
    run("decode", str(model), 1, 1, path)  # a third process, 1 thread, batch 1
    data = np.load(path)
    streams = [data[f"s{i}"].tobytes() for i in range(4)]
    mine = codec.compress([images[f"img{i}"] for i in range(4)], 5)  # this process
    models = set()
    for i, (theirs, ours) in enumerate(zip(streams, mine, strict=True)):
        parsed = codec.parse(theirs)
        a, b = parsed.indices, codec.parse(ours).indices
        np.testing.assert_array_equal(data[f"i{i}"], a)  # entropy decoding: bit-exact
        assert (a == b).mean() >= 0.99, f"image {i}: indices differ"  # argmax near-ties only
        if np.array_equal(a, b):
            assert theirs[10:-4] == ours[10:-4]  # same indices: same model byte and payload
        models.add(parsed.header.probability_model)
        here = codec.decompress([theirs])[0]
        diff = np.abs(here.astype(np.int16) - data[f"d{i}"].astype(np.int16)).max()
        assert diff <= 1, f"image {i}: decoded pixels differ by {diff} levels across processes"
    assert bitstream.ProbabilityModel.CONTEXT in models
