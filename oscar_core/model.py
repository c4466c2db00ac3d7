"""``OscarModel``: every weight of an OSCAR codec in one module, and how it is stored.

    x (B,3,H,W) --autoencoder.encode--> z0 (B,4,h,w)
    z0 --hypers[r].encode_indices--> indices (B,h/d,w/d)            [the bitstream, rate r]
    indices --hypers[r].decode_indices--> z~ (B,4,h,w) --match_norms(rms(z0))--> x_t
    x_t, t_r --denoiser--> z0_hat --autoencoder.decode--> x_hat (B,3,H,W)

The per-rate index distributions (``pmf_<r>``, shape (K_r,)) are buffers: they are part of
the weights file and of the model id, so encoder and decoder always agree on the CDFs. The
optional context model (``context.py``: integer tables, ``oscar fit-context``) is kept beside
the weights, in ``context.safetensors``, and is part of the model id too.
Storage: ``config.json`` + ``model.safetensors`` (+ ``context.safetensors``) in one
directory. No pickle.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .autoencoder import LatentAutoencoder
from .config import CONFIG_NAME, WEIGHTS_NAME, OscarConfig
from .context import CONTEXT_NAME, ContextModel
from .denoiser import OneStepDenoiser
from .entropy import uniform_pmf
from .hyper import HEAD_LAYOUT, HyperEncoder, channel_rms, hyper_layout, match_norms
from .ladder import RateLadder


class OscarModel(nn.Module):
    def __init__(self, config: OscarConfig, empty_weights: bool = False):
        """``empty_weights``: the VAE and UNet are built on the meta device (no memory, no
        init cost) for ``from_pretrained`` to fill with ``load_state_dict(assign=True)``."""
        super().__init__()
        self.config = config
        self.ladder: RateLadder = config.rate_ladder()
        self.autoencoder = LatentAutoencoder(config.autoencoder, empty_weights)
        latent_channels = config.autoencoder.latent_channels
        self.hypers = nn.ModuleList(
            HyperEncoder(config.hyper, rate, latent_channels) for rate in self.ladder
        )
        self.denoiser = OneStepDenoiser(config.denoiser, empty_weights)
        # integer tables of the context model (not a tensor: never moved, cast or trained)
        self.context: ContextModel | None = None
        for rate in self.ladder:
            # uniform until training estimates the index histograms
            self.register_buffer(f"pmf_{rate.index}", torch.from_numpy(uniform_pmf(rate.K)).float())

    def pmf(self, rate_index: int) -> Tensor:
        return getattr(self, f"pmf_{rate_index}")

    def set_pmf(self, rate_index: int, pmf: Tensor) -> None:
        K = self.ladder[rate_index].K
        if pmf.shape != (K,):
            raise ValueError(
                f"pmf for rate {rate_index} must have shape ({K},), got {tuple(pmf.shape)}"
            )
        self.pmf(rate_index).copy_(pmf.float())

    def pmf_fitted(self, rate_index: int) -> bool:
        """False while the rate's pmf is still the uniform one it starts with (an imported
        reference model until ``oscar fit-entropy``): pixels never depend on it, bytes do."""
        uniform = torch.from_numpy(uniform_pmf(self.ladder[rate_index].K)).float()
        return not torch.equal(self.pmf(rate_index).cpu(), uniform)

    def pad_multiple(self, rate_index: int) -> int:
        """Image sides are padded to a multiple of this for ``rate_index`` (8 * lcm(d, unet))."""
        d = self.ladder[rate_index].downsample
        return 8 * math.lcm(d, self.denoiser.downscale)

    def forward(self, x: Tensor, rate_index: int, z0: Tensor | None = None) -> dict[str, Tensor]:
        """Training pass at one rate. x (B,3,H,W) in [-1,1], sides multiples of pad_multiple.

        ``z0`` may be given (cached latents). Returns z0, z_tilde, x_t, z0_hat, x_hat
        (unclamped), indices and the VQ commitment loss.
        """
        if z0 is None:
            with torch.no_grad():
                z0 = self.autoencoder.encode(x)
        z_tilde, indices, commit = self.hypers[rate_index](z0)
        x_t = match_norms(z_tilde, channel_rms(z0))
        t = self.ladder[rate_index].t
        t_r = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        z0_hat = self.denoiser(x_t, t_r)
        x_hat = self.autoencoder.decode_unclamped(z0_hat)
        return {
            "z0": z0,
            "z_tilde": z_tilde,
            "x_t": x_t,
            "z0_hat": z0_hat,
            "x_hat": x_hat,
            "indices": indices,
            "commit": commit,
        }

    def take_rates(self, source: OscarModel, rates: list[int | str]) -> list[int]:
        """Make these rates exactly ``source``'s: their hyper-encoders, pmfs, t_r and context
        tables. Only for models that share everything else a rate's pixels depend on (the
        autoencoder, the denoiser, the hyper-encoder config and each rate's downsampling and
        K): then those rates' streams and pixels are ``source``'s, and the other rates' stay
        this model's (stage 1 trains hyper-encoders per rate, so a refinement may win at some
        rates and lose at others). ``rates``: ladder indices or CLI text (``RateLadder.resolve``);
        returns the indices taken. ValueError naming the difference, before any change."""
        if self.config.hyper != source.config.hyper or len(source.ladder) != len(self.ladder):
            raise ValueError("the hyper-encoder configs or the ladders' lengths differ")
        for part in ("autoencoder", "denoiser"):
            a, b = getattr(self, part).state_dict(), getattr(source, part).state_dict()
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                raise ValueError(f"the {part}s differ: a rate can move only between models "
                                 "that share it")  # fmt: skip
        indices = [self.ladder.resolve(r).index for r in rates]  # ValueError if unknown
        for r in indices:
            mine, theirs = self.config.ladder[r], source.config.ladder[r]
            if mine[:2] != theirs[:2]:
                raise ValueError(
                    f"rate {r}: downsampling and K differ ({mine[:2]} vs {theirs[:2]})"
                )
        for r in indices:
            self.hypers[r].load_state_dict(source.hypers[r].state_dict())
            self.set_pmf(r, source.pmf(r))
            self.config.ladder[r] = list(source.config.ladder[r])
            if self.context is not None and source.context is not None:
                self.context = self.context.with_rate(r, source.context.rates[r])
            else:  # tables of the old codes would code the new ones badly: refit them
                self.context = None
        self.ladder = self.config.rate_ladder()
        return indices

    # -- identity and storage ------------------------------------------------------------
    def _weights_digest(self) -> bytes:
        h = hashlib.sha256(self.config.architecture_json().encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.digest()

    def base_model_id(self) -> bytes:
        """4 bytes of SHA-256 over the architecture (the config without name and notes) and
        every saved tensor (name, dtype, shape, bytes): the same weights anywhere, under any
        path or name, give the same id; no path is in the config to begin with. The context
        model is not in it: this is the id format-3 streams were written under."""
        return self._weights_digest()[:4]

    def model_id(self) -> bytes:
        """The model's id: ``base_model_id`` without a context model, else 4 bytes of
        SHA-256 over the weights digest and the context model's digest (every table)."""
        if self.context is None:
            return self.base_model_id()
        h = hashlib.sha256(b"oscar-model+context|" + self._weights_digest())
        h.update(self.context.digest())
        return h.digest()[:4]

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write config.json + model.safetensors (floats cast to ``dtype``, pmfs kept fp32)
        and the context model (``context.safetensors``; an old one is removed when the model
        has none: it would describe other codebooks)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            if t.is_floating_point() and not name.startswith("pmf_"):
                t = t.to(dtype)
            state[name] = t.clone()
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        (out / CONFIG_NAME).write_text(self.config.to_json() + "\n")
        if self.context is not None:
            self.context.save(out)
        else:
            (out / CONTEXT_NAME).unlink(missing_ok=True)
        return out

    @staticmethod
    def stored_dtype(directory: str | Path) -> torch.dtype:
        """The dtype a model directory stores its (non-pmf) float weights in."""
        with safe_open(str(Path(directory) / WEIGHTS_NAME), framework="pt") as f:
            for name in f.keys():
                t = f.get_slice(name)
                dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
                if not name.startswith("pmf_") and t.get_dtype() in dtype:
                    return dtype[t.get_dtype()]
        return torch.float32

    @staticmethod
    def config_from_pretrained(directory: str | Path) -> OscarConfig:
        """Read and validate a model directory's config.json (no weights loaded)."""
        config_path = Path(directory) / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"model directory {directory}: missing {CONFIG_NAME}")
        try:
            return OscarConfig.from_json(config_path.read_text())
        except ValueError as exc:
            raise ValueError(f"model directory {directory}: bad {CONFIG_NAME}: {exc}") from exc

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OscarModel:
        """Load a model directory (config.json + model.safetensors) onto the CPU in fp32."""
        config = cls.config_from_pretrained(directory)
        weights_path = Path(directory) / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"model directory {directory}: missing {WEIGHTS_NAME}")
        state = load_file(str(weights_path))
        layout = hyper_layout(k for k in state if k.startswith("hypers."))
        if layout not in (HEAD_LAYOUT, None):
            raise ValueError(
                f"model directory {directory}: its hyper-encoders are in the {layout} layout; "
                f"this version reads the {HEAD_LAYOUT} layout only"
            )
        model = cls(config, empty_weights=True)
        # Fresh, torch-allocated copies: safetensors' tensors sit at the file's offsets (not
        # 64-byte aligned), and with assign=True they would become the parameters; MKL/oneDNN
        # kernels on AVX-512 round differently for unaligned weights (measured: a fp32 model
        # decoded 2 of 6720 pixels 1 level off its in-memory original).
        state = {
            k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone()
            for k, v in state.items()
        }
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing += [n for n, t in model.named_parameters() if t.is_meta and n not in missing]
        if missing or unexpected:
            raise ValueError(
                f"model directory {directory}: weights do not match {config.name}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if (Path(directory) / CONTEXT_NAME).is_file():
            model.context = ContextModel.load(directory, [r.K for r in model.ladder])
        return model.eval()
