"""The long-run drivers under ``make test``: bounded fuzz runs, and the soak's oracle.

``make fuzz`` runs tests/fuzz/fuzz_bitstream.py for minutes; here: a few seconds of the
Hypothesis driver in-process, and (when atheris is installed) a short libFuzzer run of the
real ``python -m`` entry point, so a broken target is noticed before a long run needs it.
``make soak`` (tests/fuzz/soak_pipeline.py) and the property test trust
``tests/pipeline/mixed_shards.py``'s records (which keys exist, which are ``ok``, which
fields they carry); they are checked here against ``read_samples`` on the same tars,
without S3 or Ray, so that a soak failure means the pipeline, not the oracle.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.samples import name_bytes, read_samples, restore_field
from tests.fuzz import fuzz_bitstream as fb
from tests.pipeline.mixed_shards import FAULTS, KINDS, MAX_PIXELS, build_shard

REPO = Path(__file__).resolve().parents[2]


def test_seeds_are_real_streams_that_parse():
    seeds = fb.seeds()
    golden = len(list(fb.GOLDEN.glob("format3-*.oscar")))
    assert golden == 3 and len(seeds) == 2 * len(fb.codec().ladder) + 2 * golden
    assert [fb.one_input(s) for s in seeds] == ["ok"] * len(seeds)
    # Every mode rejects garbage with BitstreamError only (one_input returns "rejected").
    assert fb.one_input(b"\0garbage") == "rejected"
    # 12 bytes cannot be one symbol's payload (entropy.max_payload_bytes(1) == 11)
    assert fb.one_input(b"\2\0\0\x01" + b"\xff" * 12) == "rejected"
    # nor 40 bytes a 3x3 grid's under the context model (max_payload_bytes(9, 24) == 37)
    assert fb.one_input(b"\4\0\3\3" + b"\xff" * 40) == "rejected"
    assert fb.one_input(b"\5\7\5" + bytes(range(200))) == "ok"  # context round trip


def test_hypothesis_driver_few_seconds():
    lines: list[str] = []
    n = fb.run_hypothesis(3.0, log=lines.append)
    assert n > 100
    assert re.search(r"\d+ cases in [\d.]+ s \(\d+/s\), none failed", lines[-1])


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_entry_point_short_run(tmp_path):
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "tests.fuzz.fuzz_bitstream", "-runs=3000", "-seed=1"),
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Done 3000 runs" in output
    assert not list(tmp_path.glob("crash-*")) and not list(REPO.glob("crash-*"))
    assert len(list(corpus.glob("seed-*"))) == len(fb.seeds())


# ------------------------------------------------------------------ the soak's oracle


@pytest.mark.parametrize("fault", FAULTS)
def test_mixed_shard_records_match_the_reader(fault):
    """The records ``build_shard`` promises (which records, which keys, which ok, which
    carried fields) are what ``read_samples`` makes of the tar: a failure of the property
    test or the soak then means the pipeline, not the oracle."""
    for seed in range(3):
        build = build_shard([*KINDS, "good", "dup_key"], seed, fault)
        samples = list(read_samples(io.BytesIO(build.tar), max_pixels=MAX_PIXELS))
        assert [name_bytes(s.key) for s in samples] == [r.key for r in build.records]
        for s, r in zip(samples, build.records, strict=True):
            if r.encode_ok is not None:
                assert s.ok == r.encode_ok, (r.kind, s.error)
            if s.ok:
                assert {name_bytes(k): restore_field(v) for k, v in s.metadata.items()} == r.fields
    errors = {re.sub(r"\d+", "N", s.error) for s in samples if s.error}
    assert len(errors) >= 10, errors  # the bad kinds really differ
