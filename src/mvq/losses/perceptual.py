"""LPIPS (VGG) for the VQGAN objective, with its backbone weights found on disk first.

``lpips.LPIPS(net="vgg")`` ships its linear layers inside the package, but fetches the VGG16
backbone ``vgg16-397923af.pth`` through torchvision into ``torch.hub.get_dir()/checkpoints``;
offline that fails with a bare ``URLError`` deep inside torchvision. ``build_lpips`` builds
LPIPS with a random backbone (no download) and loads the backbone from a file it resolves
itself: an explicit path, then ``$MVQ_WEIGHTS_DIR``, then the torch hub cache, then a download
into the hub cache. A failure is one ``WeightsUnavailable`` line naming the file, its URL and
where to put it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
WEIGHTS_ENV = "MVQ_WEIGHTS_DIR"


class WeightsUnavailable(FileNotFoundError):
    """A weights file is neither on disk nor downloadable (one-line message)."""


def hub_checkpoint_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_vgg16(weights_path: str | os.PathLike | None = None) -> Path:
    """The VGG16 backbone file: ``weights_path``, else ``$MVQ_WEIGHTS_DIR/vgg16-397923af.pth``,
    else the hub cache, else downloaded into the hub cache.

    Raises:
        WeightsUnavailable: an explicit path that does not exist, or no file and no download.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"LPIPS VGG16 weights {path} do not exist")
        return path
    candidates = [hub_checkpoint_dir() / VGG16_FILE]
    if os.environ.get(WEIGHTS_ENV):
        candidates.insert(0, Path(os.environ[WEIGHTS_ENV]).expanduser() / VGG16_FILE)
    for path in candidates:
        if path.is_file():
            return path
    target = candidates[-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(VGG16_URL, str(target), hash_prefix="397923af",
                                       progress=False)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - URLError, OSError, hash mismatch: all one message
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise WeightsUnavailable(
            f"LPIPS needs the VGG16 weights {VGG16_FILE}, found neither in ${WEIGHTS_ENV} nor in "
            f"{target.parent}, and downloading {VGG16_URL} failed ({reason}): fetch that file "
            f"where there is network and put it in {target.parent}/ or in ${WEIGHTS_ENV}, or "
            "train without LPIPS with --set model_config.perceptual=none (not the paper's recipe)"
        ) from None
    return target


def load_vgg16_backbone(net: nn.Module, path: Path) -> None:
    """Load torchvision's ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` layers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a broken file
        raise WeightsUnavailable(f"{path} is not a readable VGG16 state dict ({err})") from None
    mapped = {}
    for name in net.state_dict():
        _, index, kind = name.split(".")  # "slice1.0.weight" -> features.0.weight
        key = f"features.{index}.{kind}"
        if key not in state:
            raise WeightsUnavailable(f"{path} is not torchvision's VGG16 ({key} is missing)")
        mapped[name] = state[key]
    net.load_state_dict(mapped)


def build_lpips(weights_path: str | os.PathLike | None = None, random_backbone: bool = False
                ) -> nn.Module:  # fmt: skip
    """Frozen ``lpips.LPIPS(net="vgg")`` in eval mode: ``(x, x_hat) -> (B, 1, 1, 1)`` distances
    of 3-channel images in [-1, 1].

    Args:
        weights_path: the VGG16 backbone file (default: resolved by ``resolve_vgg16``).
        random_backbone: keep the random backbone (``pnet_rand``): for wiring tests only, the
            distances mean nothing.
    """
    import lpips

    path = None if random_backbone else resolve_vgg16(weights_path)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=False``
        warnings.filterwarnings("ignore", ".*(pretrained|weight enum).*", UserWarning)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    if path is not None:
        load_vgg16_backbone(model.net, path)
    return model.eval().requires_grad_(False)
