"""LPIPS (Zhang et al. 2018) with the VGG16 backbone, through the ``lpips`` package.

The package ships its linear layers; the VGG16 ImageNet weights (torchvision's
``vgg16-397923af.pth``) are found by ``mvq.metrics.weights`` and loaded into a randomly
initialised trunk, so nothing is fetched behind the resolver's back. ``random_backbone=True``
skips them (LPIPS numbers are then meaningless: for wiring tests only).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import torch
from torch import Tensor, nn

from mvq.metrics.weights import WEIGHTS, resolve_weights


def _backbone_state(lpips_net: nn.Module, vgg_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision VGG16 keys ``features.{i}.*`` -> the lpips trunk's ``slice{k}.{i}.*``."""
    state = {}
    for key in lpips_net.state_dict():
        _, index, param = key.split(".")  # sliceK.i.weight
        state[key] = vgg_state[f"features.{index}.{param}"]
    return state


def load_lpips(
    weights_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    random_backbone: bool = False,
    path: str | os.PathLike | None = None,
) -> nn.Module:
    """``lpips.LPIPS(net="vgg")`` in eval mode with the VGG16 backbone ``path``, or the one the
    resolver finds (``weights_dir``, ``$MVQ_WEIGHTS_DIR``, hub cache, download)."""
    import lpips

    if path is None and not random_backbone:
        path = resolve_weights(WEIGHTS["vgg16"], weights_dir)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the package prints a banner and passes torchvision's deprecated ``pretrained=False``
        warnings.filterwarnings("ignore", ".*(pretrained|weight enum).*", UserWarning)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    if path is not None:
        try:
            vgg_state = torch.load(path, map_location="cpu", weights_only=True)
            model.net.load_state_dict(_backbone_state(model.net, vgg_state))
        except Exception as err:  # noqa: BLE001 - torch.load raises many types on a bad file
            raise ValueError(
                f"{path} is not torchvision's VGG16 state dict ({' '.join(str(err).split())}); "
                f"delete it and download {WEIGHTS['vgg16'].url} again"
            ) from err
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_distance(model: nn.Module, a: Tensor, b: Tensor, batch_size: int = 250) -> Tensor:
    """Per-image LPIPS ``(N,)`` between float images ``(N, C, H, W)`` in [-1, 1] (gray -> RGB)."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(a), batch_size):
        x, y = (t[i : i + batch_size].to(device) for t in (a, b))
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        out.append(model(x, y).flatten().cpu())
    return torch.cat(out)
