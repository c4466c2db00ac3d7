"""``--precision``: oscar compress / decompress (in-process, a tiny seeded model), the shard
commands' parser and worker config, and ``oscar bench``'s precision list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.bench.common import parse_precisions
from jobs.cli import main as cli
from oscar_core import Codec, precision
from oscar_core.precision import cpu_supports_bf16
from tests.conftest import smooth_image

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no native bf16")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_precision")
    Codec.from_config("oscar-tiny", seed=0).model.save_pretrained(root / "model")
    Image.fromarray(smooth_image(33, 57, seed=1)).save(root / "a.png")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the CLI's --threads sets it process-wide


@needs_bf16
def test_compress_and_decompress_bf16(workdir, capsys):
    m = ["--model", str(workdir / "model"), "--threads", "1"]
    for p in ("fp32", "bf16"):
        out = workdir / p
        rc = cli.main(["compress", str(workdir / "a.png"), "-o", str(out), "--rate", "3"] + m)
        assert rc == 0
        rc = cli.main(["decompress", str(out / "a.oscar"), "-o", str(out), "--precision", p] + m)
        assert rc == 0
        with Image.open(out / "a.png") as img:
            assert img.size == (57, 33)
    rc = cli.main(
        ["compress", str(workdir / "a.png"), "-o", str(workdir / "enc16"), "--rate", "3"]
        + ["--precision", "bf16", *m]
    )
    assert rc == 0 and (workdir / "enc16" / "a.oscar").stat().st_size > 25
    a = np.asarray(Image.open(workdir / "fp32" / "a.png")).astype(np.int16)
    b = np.asarray(Image.open(workdir / "bf16" / "a.png")).astype(np.int16)
    assert np.abs(a - b).mean() < 2.5  # same stream, bf16 decoder (random weights)
    assert "error" not in capsys.readouterr().err


def test_unknown_precision_is_a_usage_error(workdir):
    with pytest.raises(SystemExit) as exc:
        cli.main(
            ["compress", "a.png", "-o", str(workdir / "x"), "--rate", "3"] + ["--precision", "fp16"]
        )
    assert exc.value.code == 2


def test_bf16_without_native_support_exits_2(workdir, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    rc = cli.main(
        ["compress", str(workdir / "a.png"), "-o", str(workdir / "none"), "--rate", "3"]
        + ["--model", str(workdir / "model"), "--precision", "bf16"]
    )
    assert rc == 2
    assert "oscar: error: compress: precision bf16: this CPU has no native bfloat16" in (
        capsys.readouterr().err
    )


def test_shard_commands_take_precision():
    parser = cli.build_parser()
    for command in ("encode-shards", "decode-shards", "recompress"):
        args = parser.parse_args([command, "in", "--out", "o", "--precision", "bf16"])
        assert args.precision == "bf16"
        assert parser.parse_args([command, "in", "--out", "o"]).precision == "fp32"


@needs_bf16
def test_worker_config_precision(workdir):
    from pipeline.contract import WorkerConfig
    from pipeline.worker import ShardWorker

    worker = ShardWorker(WorkerConfig(str(workdir / "model"), precision="bf16"))
    assert worker.codec.precision == "bf16" and worker.describe()["precision"] == "bf16"


def test_bench_precision_list(monkeypatch):
    assert parse_precisions("fp32") == (("fp32",), None)
    with pytest.raises(ValueError, match="Invalid precision"):
        parse_precisions("fp32,int8")
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    precisions, note = parse_precisions(None)
    assert precisions == ("fp32",) and note.startswith("bf16 not measured")
    with pytest.raises(ValueError, match="no native bfloat16"):
        parse_precisions("fp32,bf16")
