"""Pretrained weights of the metric networks, found offline first, downloaded last.

One resolver for every file (torch-fidelity's Inception for FID, torchvision's VGG16 for
LPIPS). ``resolve_weights(WEIGHTS["inception"], weights_dir)`` looks, in order, in

1. ``weights_dir`` (``mvq eval --weights-dir DIR``);
2. ``$MVQ_WEIGHTS_DIR``;
3. the torch hub cache ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``,
   default ``~/.cache/torch/hub/checkpoints``), where torch-fidelity and torchvision download to;

and only then downloads into the hub cache, unless ``MVQ_OFFLINE=1``. When the file cannot be
had, ``WeightsUnavailable`` says in one line which file, from which URL, and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mvq.core.errors import MVQError

ENV_DIR = "MVQ_WEIGHTS_DIR"
ENV_OFFLINE = "MVQ_OFFLINE"


class WeightsUnavailable(MVQError, FileNotFoundError):
    """A weights file is neither on disk nor downloadable; the message says how to fix it."""


@dataclass(frozen=True)
class WeightsFile:
    """A downloadable weights file: its name on disk, its URL and what needs it."""

    name: str
    url: str
    used_for: str


WEIGHTS: dict[str, WeightsFile] = {
    "inception": WeightsFile(
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        "FID (torch-fidelity inception-v3-compat)",
    ),
    "vgg16": WeightsFile(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "LPIPS (VGG16 backbone, torchvision)",
    ),
}


def hub_checkpoints() -> Path:
    """The torch hub cache's ``checkpoints`` folder (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for weights, in order: explicit, ``$MVQ_WEIGHTS_DIR``, hub cache."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir else []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]).expanduser())
    return [*dirs, hub_checkpoints()]


def _download(url: str, destination: Path) -> None:
    """Fetch ``url`` to ``destination`` (atomically, hash prefix checked, as torch hub does)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    stem = destination.name.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1]
    check = prefix if len(prefix) == 8 and all(c in "0123456789abcdef" for c in prefix) else None
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=check, progress=True)


def resolve_weights(
    weights: WeightsFile, weights_dir: str | os.PathLike | None = None, download: bool | None = None
) -> Path:
    """Path of ``weights`` on disk, downloading it into the hub cache as a last resort.

    Args:
        weights: the file, e.g. ``WEIGHTS["inception"]``.
        weights_dir: a folder searched first (``--weights-dir``).
        download: allow the download; ``None``: yes unless ``$MVQ_OFFLINE`` is set (to 1/true).

    Raises:
        WeightsUnavailable: not found and not downloadable; one line naming the file, the URL
            and where to put it.
    """
    dirs = search_dirs(weights_dir)
    for folder in dirs:
        if (folder / weights.name).is_file():
            return folder / weights.name
    why = "downloads disabled"
    if download is None:
        download = os.environ.get(ENV_OFFLINE, "").lower() not in ("1", "true", "yes")
        why = f"{ENV_OFFLINE} is set"
    target = (Path(weights_dir).expanduser() if weights_dir else hub_checkpoints()) / weights.name
    if download:
        try:
            _download(weights.url, hub_checkpoints() / weights.name)
            return hub_checkpoints() / weights.name
        except Exception as err:  # noqa: BLE001 - urllib, ssl, OSError, hash mismatch ...
            why = f"download failed: {' '.join(str(err).split())}"
    raise WeightsUnavailable(
        f"{weights.name} (for {weights.used_for}) not found in {', '.join(map(str, dirs))} and "
        f"not downloaded ({why}); download {weights.url} and put it in {target.parent} "
        f"(or pass --weights-dir DIR / set {ENV_DIR})"
    )
