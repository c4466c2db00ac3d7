"""Training job: the whole stage plan on a few synthetic images, resume, and the GAN gradient."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.train.config import StageConfig, TrainConfig
from jobs.train.losses import PatchDiscriminator, Stage2Loss
from jobs.train.trainer import Trainer
from oscar_core import Codec, OscarModel, get_config
from tests.conftest import smooth_image


def tiny_run(tmp_path, steps: int = 2, **extra) -> TrainConfig:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        Image.fromarray(smooth_image(140, 300, seed=i)).save(data / f"img{i}.png")
    return TrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        holdout_every=3,
        cache_crops=8,
        fit_crops=4,
        stage0=StageConfig(steps, 2, 64, 1e-3),
        stage1=StageConfig(steps, 4, 128, 1e-3),
        stage2=StageConfig(steps, 2, 64, 1e-4),
        save_dtype="float32",
        **extra,
    )


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A model directory trained one step per stage: the base of the refinement tests
    (read only)."""
    root = tmp_path_factory.mktemp("base")
    assert Trainer(tiny_run(root, steps=1)).run()
    return root / "run" / "model"


def test_all_stages_write_a_usable_model(tmp_path):
    cfg = tiny_run(tmp_path)
    assert Trainer(cfg).run()
    model_dir = tmp_path / "run" / "model"
    codec = Codec.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    fit = config["notes"]["training"]["fit"]
    assert len(fit) == 8 and all(1 <= row["t"] < 1000 for row in fit)
    assert len(config["notes"]["training"]["pmf_refit"]) == 8  # pmfs follow stage 2
    assert [row[2] for row in config["ladder"]] == [row["t"] for row in fit]  # refitted t_r
    assert config["autoencoder"]["scaling_factor"] != 1.0  # fitted after stage 0
    pmf = codec.model.pmf(0)
    assert torch.isclose(pmf.sum(), torch.tensor(1.0), atol=1e-4)
    image = smooth_image(50, 70)
    decoded = codec.decompress(codec.compress([image], 3))[0]
    assert decoded.shape == (50, 70, 3)


def test_stage_stops_on_time_limit_and_resumes(tmp_path):
    cfg = tiny_run(tmp_path, steps=1)
    cfg.stage0 = StageConfig(4, 2, 64, 1e-3, max_minutes=1e-9)  # stop after the first step
    assert not Trainer(cfg).run()
    state = torch.load(tmp_path / "run" / "ckpt" / "stage0.pt", weights_only=True)
    assert state["step"] == 1
    cfg.stage0.max_minutes = None
    assert Trainer(cfg).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage0"]["steps"] == 4 and (tmp_path / "run" / "ckpt" / "stage2.done").exists()


def test_adversarial_gradient_reaches_the_generator():
    torch.manual_seed(0)
    model = OscarModel(get_config("oscar-tiny"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z0 = model.autoencoder.encode(x)
    x_u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    loss = Stage2Loss(model, PatchDiscriminator(), x_u8, z0, 2, torch.device("cpu"))
    out = model(x, 7, z0=z0)
    loss.generator_adv(out["x_hat"]).backward()
    unet_grads = [p.grad for p in model.denoiser.parameters() if p.grad is not None]
    hyper_grads = [p.grad for p in model.hypers[7].parameters() if p.grad is not None]
    assert unet_grads and any(float(g.abs().sum()) > 0 for g in unet_grads)
    assert hyper_grads and any(float(g.abs().sum()) > 0 for g in hyper_grads)


def test_unknown_config_field(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"nope": 1}))
    try:
        TrainConfig.from_json(path)
    except ValueError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("unknown field accepted")


def test_crop_sampler_is_seeded():  # noqa: D103
    from jobs.train.data import CropSampler

    imgs = [smooth_image(80, 90, seed=1)]
    a, b = CropSampler(imgs, seed=3).batch(2, 64), CropSampler(imgs, seed=3).batch(2, 64)
    assert torch.equal(a, b) and a.shape == (2, 3, 64, 64)
    assert np.isclose(float(a.max()), 1.0, atol=0.05) or float(a.max()) <= 1.0


def test_code_entropy_is_normalised_and_moves_only_the_encoder():
    model = OscarModel(get_config("oscar-tiny"))
    hyper = model.hypers[4]  # K = 16
    z0 = torch.randn(2, 4, 16, 16)
    hyper.train()
    hyper(z0)  # k-means initialises the codebook (all zeros before: no gradient)
    h = hyper.code_entropy(z0)
    assert 0.0 <= float(h.detach()) <= 1.0 + 1e-6
    (1 - h).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.backbone.parameters())
    assert hyper.quantizer._codebook.embed.grad is None  # the codebook is detached


def test_refinement_trains_listed_rates_and_keeps_the_autoencoder(tmp_path, base_dir):
    cfg = tiny_run(tmp_path, steps=2, rates=[4], diversity=1.0, diversity_rates=[4])
    cfg.base, cfg.stage0 = str(base_dir), StageConfig(0, 2, 64, 1e-3)
    cfg.stage2 = StageConfig(0, 2, 64, 1e-4)  # stage 1 only: the hyper-encoders it lists
    assert Trainer(cfg).run()
    before = OscarModel.from_pretrained(base_dir).state_dict()
    after = OscarModel.from_pretrained(tmp_path / "run" / "model").state_dict()
    changed = {k.split(".")[1] for k in before if k.startswith("hypers.") and
               not torch.equal(before[k], after[k]) and "pmf" not in k}  # fmt: skip
    assert changed == {"4"}
    ae = [k for k in before if k.startswith("autoencoder.")]
    assert all(torch.equal(before[k], after[k]) for k in ae)  # stage 0 skipped, scale kept
    with pytest.raises(ValueError, match="rates"):
        Trainer(tiny_run(tmp_path / "bad", rates=[8])).stage1_rates()


def test_lpips_from_local_weights_reaches_the_generator(tmp_path):
    # AlexNet weights with random values, saved the way a torch hub cache holds them
    import torchvision

    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    model = OscarModel(get_config("oscar-tiny"))
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z0 = model.autoencoder.encode(x)
    loss = Stage2Loss(model, PatchDiscriminator(), ((x + 1) * 127.5).to(torch.uint8), z0, 2,
                      torch.device("cpu"), weights={"lpips": 1.0, "adv": 0.0},
                      lpips_weights=str(weights))  # fmt: skip
    losses = loss(0)
    assert "lpips" in losses and float(losses["lpips"]) > 0
    losses["total"].backward()
    grads = [p.grad for p in model.denoiser.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in loss.lpips.parameters())  # the network stays frozen


def test_decoder_stage_changes_only_the_decoder(tmp_path, base_dir):
    cfg = tiny_run(tmp_path, steps=0, fit_timesteps=False)
    cfg.base, cfg.stage3 = str(base_dir), StageConfig(2, 2, 64, 1e-3)
    assert Trainer(cfg).run()
    before = OscarModel.from_pretrained(base_dir)
    after = OscarModel.from_pretrained(tmp_path / "run" / "model")
    assert [r.t for r in after.ladder] == [r.t for r in before.ladder]  # t_r kept
    a, b = before.state_dict(), after.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    decoder_side = ("autoencoder.vae.decoder.", "autoencoder.vae.post_quant_conv.",
                    "autoencoder.skip_out.")  # fmt: skip
    assert changed and all(k.startswith(decoder_side) for k in changed)
    # the bitstream does not change: same encoder, hyper-encoders and pmfs
    image = smooth_image(64, 64)
    (s_before,), (s_after,) = Codec(before).compress([image], 2), Codec(after).compress([image], 2)
    assert s_before[7:-4] == s_after[7:-4]  # all but the model id and the CRC over it


def test_colour_skip_is_added_to_a_base_without_it(tmp_path):
    config = get_config("oscar-tiny")
    config.autoencoder.colour_skip = False  # a model trained before the skip existed
    OscarModel(config).save_pretrained(tmp_path / "base", dtype=torch.float32)
    cfg = tiny_run(tmp_path, steps=2, colour_skip=True, chroma_weight=4.0)
    cfg.base = str(tmp_path / "base")
    assert Trainer(cfg).run()
    model = OscarModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.autoencoder.colour_skip
    assert model.autoencoder.skip_out.weight.abs().sum() > 0  # trained off its zero start
    assert (
        "chroma"
        in json.loads((tmp_path / "run" / "summary.json").read_text())["stage0"]["final_losses"]
    )


def test_negative_diversity_weight_is_an_entropy_penalty(tmp_path):
    cfg = tiny_run(tmp_path, diversity=1.0, diversity_rates=[0, 4])
    cfg.diversity_weights = {"0": -0.5}
    trainer = Trainer(cfg)
    z0 = torch.randn(2, 4, 32, 32)
    for r in (0, 4):
        trainer.model.hypers[r].train()(z0)  # k-means initialises the codebooks
    with torch.no_grad():
        h0 = float(trainer.model.hypers[0].code_entropy(z0, cfg.diversity_temperature))
    penalty = trainer.diversity_loss(0, z0)
    assert float(penalty.detach()) == pytest.approx(
        -0.5 * (1 - h0), abs=1e-5
    )  # minimising it lowers H
    assert float(trainer.diversity_loss(4, z0).detach()) >= 0  # weight 1.0: maximises H
    assert trainer.diversity_loss(2, z0) == 0.0  # not listed


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_training_from_sd21_writes_a_self_contained_model(tmp_path):
    from tests.reference_fixtures import make_sd21_dir

    sd21 = make_sd21_dir(tmp_path / "sd21")
    cfg = tiny_run(tmp_path, base="oscar-sd21", sd21_dir=str(sd21), lora_rank=4,
                   hyper={"N": 16, "M": 24, "attention": False}, fit_timesteps=False)  # fmt: skip
    cfg.stage1 = StageConfig(2, 2, 64, 5e-5)
    trainer = Trainer(cfg)
    unet = trainer.model.denoiser.unet
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("autoencoder.") for n in trainable)  # frozen SD VAE
    assert any("lora_B" in n for n in trainable) and "denoiser.embedding" in trainable
    assert any(n.startswith("denoiser.unet.conv_in") and "lora" not in n for n in trainable)
    assert not unet.down_blocks[0].resnets[0].conv1.base_layer.weight.requires_grad
    vae_before = {k: v.clone() for k, v in trainer.model.autoencoder.state_dict().items()}
    assert trainer.run()
    assert not (tmp_path / "run" / "ckpt" / "stage0.done").exists()  # no stage 0
    model_dir = tmp_path / "run" / "model"
    text = (model_dir / "config.json").read_text()
    assert str(sd21) not in text and json.loads(text)["denoiser"]["lora_rank"] == 0  # merged
    assert json.loads(text)["ladder"][0][2] == 500  # the reference's timesteps kept
    codec = Codec.from_pretrained(model_dir)
    for k, v in codec.model.autoencoder.state_dict().items():
        torch.testing.assert_close(v, vae_before[k])
    image = smooth_image(64, 64)
    assert codec.decompress(codec.compress([image], 7))[0].shape == (64, 64, 3)


def test_stage1_mse_term_lowers_the_error_of_x_t(tmp_path, base_dir):
    """``stage1_mse_weight``: the same start and batches, with and without the x_t error
    term; the run that has it ends with the smaller relative error of x_t to z0 (the
    magnitudes a per-position cosine ignores)."""
    from oscar_core.hyper import channel_rms, match_norms

    errors = {}
    for weight in (0.0, 4.0):
        cfg = tiny_run(tmp_path / f"w{weight}", steps=12, rates=[7], stage1_mse_weight=weight)
        cfg.base, cfg.stage0 = str(base_dir), StageConfig(0, 2, 64, 1e-3)
        cfg.stage2, cfg.fit_timesteps = StageConfig(0, 2, 64, 1e-4), False
        trainer = Trainer(cfg)
        assert trainer.run()
        losses = json.loads((tmp_path / f"w{weight}" / "run" / "summary.json").read_text())
        assert (losses["stage1"]["final_losses"]["mse"] > 0) == (weight > 0)
        z0 = torch.load(tmp_path / f"w{weight}" / "run" / "ckpt" / "latents-train-128.pt")["z0"]
        with torch.no_grad():
            z_tilde, _, _ = trainer.model.hypers[7].eval()(z0)
            x_t = match_norms(z_tilde, channel_rms(z0))
        errors[weight] = float((x_t - z0).pow(2).mean() / z0.pow(2).mean())
    assert errors[4.0] < errors[0.0]


def test_denoiser_only_stage2_keeps_the_base_bitstreams(tmp_path, base_dir):
    """``stage2_hypers`` false: the hyper-encoders (weights, codebooks, pmfs) and t_r stay the
    base's, so the trained model writes the base's streams (header and payload; the CRC is
    seeded by the model id); the denoiser learns."""
    cfg = tiny_run(tmp_path, steps=3, stage2_hypers=False, fit_timesteps=False)
    cfg.base, cfg.stage0, cfg.stage1 = (
        str(base_dir),
        StageConfig(0, 2, 64, 1e-3),
        StageConfig(0, 4, 128, 1e-3),
    )
    assert Trainer(cfg).run()
    before = OscarModel.from_pretrained(base_dir).state_dict()
    after = OscarModel.from_pretrained(tmp_path / "run" / "model").state_dict()
    hypers = [k for k in before if k.startswith("hypers.")]
    assert hypers and all(torch.equal(before[k], after[k]) for k in hypers)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("denoiser."))
    image = smooth_image(64, 96, seed=4)
    old, new = Codec.from_pretrained(base_dir), Codec.from_pretrained(tmp_path / "run" / "model")
    for rate in (0, 7):
        a, b = old.compress([image], rate)[0], new.compress([image], rate)[0]
        assert a[:-4] == b[:-4]  # all but the CRC, which the model id (weights) seeds
    bad = tiny_run(tmp_path / "bad", stage2_hypers=False)  # stage 1 would move the codes
    with pytest.raises(ValueError, match="stage2_hypers"):
        Trainer(bad)
