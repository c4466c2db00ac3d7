"""LPIPS (AlexNet, v0.1) from LOCAL weights: an ``oscar eval`` metric and a stage-2 training
loss (``lpips_weights``). Nothing is downloaded: the weights come from a file the user gives.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# torchvision AlexNet ``features`` index -> LPIPS slice (see lpips.pretrained_networks.alexnet)
_ALEX_SLICES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


class Lpips:
    """LPIPS (AlexNet, v0.1), 0 = identical, lower is better; from LOCAL weights only.

    ``weights`` is either a torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth`` from
    a torch hub cache: the linear heads then come from the ``lpips`` wheel, which ships
    them) or a full ``lpips.LPIPS(net="alex").state_dict()`` saved with ``torch.save``.
    Nothing is downloaded: the backbone is built empty and filled from the file.
    """

    def __init__(self, weights: str | Path):
        import lpips
        import torch

        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"LPIPS weights {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors of every kind: one clear message
            raise ValueError(f"LPIPS weights {path}: cannot load ({type(exc).__name__})") from None
        if not isinstance(state, dict):
            raise ValueError(f"LPIPS weights {path}: not a state dict")
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notice
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        if any(k.startswith("features.") for k in state):  # torchvision AlexNet
            state = {
                f"net.slice{_ALEX_SLICES[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                for k, v in state.items()
                if k.startswith("features.") and int(k.split(".")[1]) in _ALEX_SLICES
            }
        backbone = {k for k in self.model.state_dict() if k.startswith("net.")}
        missing = sorted(backbone - set(state))
        if missing:
            raise ValueError(
                f"LPIPS weights {path}: not AlexNet or LPIPS-alex weights (missing {missing[:3]})"
            )
        self.model.load_state_dict(state, strict=False)
        self.model.eval()

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> float:
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:  # [0, 1], LPIPS rescales to [-1, 1]
            return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255

        with torch.inference_mode():
            return float(self.model(tensor(ref), tensor(test), normalize=True))
