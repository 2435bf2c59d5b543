"""``mvq eval``: judge a tokenizer, a tokenizer + prior, or any folder of images.

Three forms, each printing a table and writing ``eval.json`` and one row of ``eval.csv`` in
``--out``::

    mvq eval --tokenizer DIR [--data fashion_mnist --split test] --out DIR   # reconstruction
    mvq eval --tokenizer DIR --prior DIR -n 10000 --out DIR                  # samples
    mvq eval --images DIR --data fashion_mnist --out DIR                     # a folder

``--split test`` is the data set's own test split (Fashion-MNIST's 10,000 ``t10k`` images, which
``mvq.data`` calls ``val``). Distribution metrics compare uint8 images (what a PNG holds), the
reference being the split (``min(n, N)`` of its images, a seeded random subset when smaller).

``eval.json`` is a flat object ``{name: number}`` plus ``"unavailable": {name: reason}`` and
``"meta": {tokenizer, prior, images, data, split, n, reference_images, device, time, ...}``;
``meta.fd_fmnist_classifier`` names the classifier behind the fd_fmnist numbers and F-scores
(``id``, ``shipped``, test ``accuracy``, ``weights_sha256``, ``source``): mvq's shipped one
unless ``--fd-classifier local`` (the default recipe trained on the data at ``--root``, once) or
``--fd-classifier PATH`` (a ``<key>.json`` that mvq wrote) picks another.
The names are stable (a sweep reads them):

- reconstruction form: ``mse`` (images in [-1, 1]), ``psnr`` (dB, per image on [0, 1], mean),
  ``ssim`` (torchmetrics, gaussian 11x11, [0, 1]), ``lpips`` (VGG), ``fid`` (reconstructions
  vs originals, torch-fidelity Inception), ``fd_fmnist`` and ``fd_fmnist_floor`` (Fréchet
  distance on mvq's Fashion-MNIST classifier features, and between two random halves of the
  reference: not FID), ``usage_primary``, ``usage_secondary`` (fraction of codebook entries
  used on the split), ``perplexity_primary``, ``perplexity_secondary`` (exp of the entropy of
  the code histogram), ``bits_per_image`` (the rate, MVQ's mask bits included); for MVQ also
  ``random_mask_mse``, ``random_mask_psnr``, ``random_mask_ssim``, ``random_mask_lpips``,
  ``random_mask_fid``, ``random_mask_fd_fmnist``: the same tokens decoded with a random
  Bernoulli(0.5) mask (a mask codebook: a uniformly drawn one of its J masks) instead of the
  searched one (what the mask bits carry);
- sample and image-folder forms: ``sample_fid``, ``sample_fd_fmnist``, ``fd_fmnist_floor``,
  ``sample_f8`` and ``sample_f1_8`` (PRD F_8 / F_1/8 on the fd_fmnist classifier features),
  ``sample_f8_inception`` and ``sample_f1_8_inception`` (on the Inception features, when FID
  runs); with a prior also ``prior_nll_nats_per_token`` and ``prior_bits_per_image`` (its NLL
  on the split's tokens, encoded by the tokenizer) and ``bits_per_image``.

``--metrics a,b`` asks for metrics by group name (``mse, psnr, ssim, lpips, fid, fd_fmnist,
usage, perplexity, bits_per_image, random_mask, f_scores, prior_nll``; any name above also
selects its group): one that cannot run is an error. By default every metric that can run
runs and each one that cannot is listed with its reason.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mvq.core.errors import MVQError
from mvq.core.pixels import float_to_uint8, uint8_to_float
from mvq.core.pretrained import atomic_write_file
from mvq.core.registry import closest_hint
from mvq.core.tokens import Tokens
from mvq.data import build_dataset
from mvq.data.folder import list_images
from mvq.tokenizers import encode_images

RECON_GROUPS = (
    "mse",
    "psnr",
    "ssim",
    "lpips",
    "fid",
    "fd_fmnist",
    "usage",
    "perplexity",
    "bits_per_image",
    "random_mask",
)
SAMPLE_GROUPS = ("fid", "fd_fmnist", "f_scores", "prior_nll", "bits_per_image")
IMAGE_GROUPS = ("fid", "fd_fmnist", "f_scores")
GROUP_OF = {
    "usage_primary": "usage",
    "usage_secondary": "usage",
    "perplexity_primary": "perplexity",
    "perplexity_secondary": "perplexity",
    "fd_fmnist_floor": "fd_fmnist",
    "prd": "f_scores",
    "sample_fid": "fid",
    "sample_fd_fmnist": "fd_fmnist",
    "sample_f8": "f_scores",
    "sample_f1_8": "f_scores",
    "sample_f8_inception": "f_scores",
    "sample_f1_8_inception": "f_scores",
    "prior_nll_nats_per_token": "prior_nll",
    "prior_bits_per_image": "prior_nll",
}


class EvalError(MVQError, ValueError):
    """Bad input to ``mvq eval``; one line, exit status 2."""


@dataclass
class EvalRequest:
    """What ``mvq eval`` was asked (the command line, typed)."""

    out: Path
    tokenizer: Path | None = None
    prior: Path | None = None
    images: Path | None = None
    data: str = "fashion_mnist"
    split: str = "test"
    root: str | None = None
    n: int | None = None
    metrics: str | None = None
    device: str = "auto"
    weights_dir: str | None = None
    batch_size: int = 250
    seed: int = 0
    fd_classifier: str = "shipped"  # or "local", or a classifier record's path

    @property
    def form(self) -> str:
        """``reconstruction``, ``samples`` or ``images``."""
        if self.images is not None:
            return "images"
        return "samples" if self.prior is not None else "reconstruction"


@dataclass
class Networks:
    """The metric networks that could be loaded, and why the others could not."""

    lpips: nn.Module | None = None
    inception: nn.Module | None = None
    classifier: object | None = None  # mvq.metrics.CachedClassifier
    missing: dict[str, str] = field(default_factory=dict)


def parse_metrics(text: str | None, form: str) -> tuple[str, ...] | None:
    """Groups asked by ``--metrics`` (None: all); unknown or inapplicable names are errors."""
    if text is None:
        return None
    allowed = {"reconstruction": RECON_GROUPS, "samples": SAMPLE_GROUPS, "images": IMAGE_GROUPS}
    groups = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        group = GROUP_OF.get(name, name.removeprefix("random_mask_"))
        if group not in set(RECON_GROUPS + SAMPLE_GROUPS):
            known = sorted(set(RECON_GROUPS + SAMPLE_GROUPS) | set(GROUP_OF))
            raise EvalError(
                f"unknown metric '{name}'{closest_hint(name, known)}; "
                f"metrics: {', '.join(allowed[form])}"
            )
        if group not in allowed[form]:
            raise EvalError(
                f"metric '{name}' does not apply to the {form} form of mvq eval; "
                f"it computes {', '.join(allowed[form])}"
            )
        groups += [group, "random_mask"] if name.startswith("random_mask_") else [group]
    if not groups:
        raise EvalError("--metrics is empty; name at least one metric")
    return tuple(dict.fromkeys(groups))


def resolve_split(data: str, split: str) -> str:
    """``test`` is the data set's test split: ``val`` where it has no split named ``test``."""
    from mvq.data import DATASETS

    spec = DATASETS.get(data)
    if spec is not None and split == "test" and "test" not in spec.splits:
        return "val"
    return split


def load_reference(request: EvalRequest) -> tuple[Tensor, Tensor]:
    """uint8 images ``(N, C, H, W)`` and labels ``(N,)`` of the requested split."""
    split = resolve_split(request.data, request.split)
    dataset = build_dataset(request.data, request.root, split)
    if (
        hasattr(dataset, "images")
        and getattr(dataset, "image_size", None) == dataset.images.shape[-1]
    ):
        return dataset.images, dataset.labels
    items = [dataset[i] for i in range(len(dataset))]
    return float_to_uint8(torch.stack([x for x, _ in items])), torch.tensor([y for _, y in items])


def load_image_folder(folder: Path, shape: tuple[int, int, int]) -> Tensor:
    """Every image under ``folder`` as uint8 ``(N, C, H, W)``; size and channels must be ``shape``.

    A gray data set accepts gray images and RGB images whose three channels are equal (how
    ``save_image`` writes gray tensors); a colour data set needs RGB images. ``grid.png`` (the
    overview ``mvq sample`` writes next to its images) is skipped.
    """
    from PIL import Image

    if not folder.is_dir():
        raise EvalError(f"--images {folder} is not a folder")
    files = [f for f in list_images(folder) if f.name != "grid.png"]
    if not files:
        raise EvalError(f"--images {folder} holds no images (png, jpg, jpeg, bmp, webp)")
    c, h, w = shape
    images = torch.empty(len(files), c, h, w, dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                array = torch.from_numpy(np.array(im.convert("RGB" if im.mode != "L" else "L")))
        except OSError as err:  # PIL's UnidentifiedImageError is one
            raise EvalError(f"cannot read image {path}: {err}") from err
        pixels = array[None] if array.dim() == 2 else array.permute(2, 0, 1)  # (C', H', W')
        if tuple(pixels.shape[1:]) != (h, w):
            raise EvalError(
                f"{path} is {pixels.shape[2]}x{pixels.shape[1]} but the data are "
                f"{w}x{h}: resize the images to the data's size"
            )
        if c == 1 and pixels.shape[0] == 3:
            if not (torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])):
                raise EvalError(f"{path} is a colour image but the data are gray (1 channel)")
            pixels = pixels[:1]
        if pixels.shape[0] != c:
            raise EvalError(f"{path} has {pixels.shape[0]} channel(s) but the data have {c}")
        images[i] = pixels
    return images


def resolve_eval_device(name: str) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N``; under torchrun ``cuda`` is the local rank's GPU."""
    from mvq.core.device import resolve_device

    return resolve_device(name, int(os.environ.get("LOCAL_RANK", "0")))


def load_fd_classifier(spec: str, data_root: str | None, device: torch.device) -> object:
    """The fd_fmnist classifier ``spec`` names (``shipped``, ``local`` or a record's path) on
    ``device``."""
    from mvq.metrics import resolve_classifier

    classifier = resolve_classifier(spec, data_root)
    classifier.model.to(device)
    return classifier


def load_networks(
    request: EvalRequest, groups: tuple[str, ...], image_shape: tuple, device: torch.device
) -> Networks:
    """Load what ``groups`` need; record each failure under its group (lpips, fid, fd_fmnist)."""
    from mvq.metrics import load_inception, load_lpips

    nets = Networks()
    fmnist_root = request.root if request.data == "fashion_mnist" else None
    needed = {
        "lpips": ("lpips", lambda: load_lpips(request.weights_dir, device)),
        "fid": ("inception", lambda: load_inception(request.weights_dir, device)),
        "fd_fmnist": (
            "classifier",
            lambda: load_fd_classifier(request.fd_classifier, fmnist_root, device),
        ),
    }
    for group, (attribute, load) in needed.items():
        if group not in groups and not (group == "fd_fmnist" and "f_scores" in groups):
            continue
        if group == "fd_fmnist" and tuple(image_shape) != (1, 28, 28):
            nets.missing[group] = (
                f"fd_fmnist needs Fashion-MNIST-like images (1, 28, 28), "
                f"the data are {tuple(image_shape)}"
            )
            continue
        try:
            setattr(nets, attribute, load())
        except (OSError, ValueError) as err:  # WeightsUnavailable, DataError, broken files
            reason = " ".join(str(err).split())
            if group == "fd_fmnist" and request.fd_classifier != "shipped":
                raise EvalError(f"--fd-classifier {request.fd_classifier}: {reason}") from err
            nets.missing[group] = reason
    return nets


class FeatureCache:
    """Features of named image sets, computed once per network (reference, recon, samples)."""

    def __init__(self, nets: Networks, batch_size: int) -> None:
        self.nets, self.batch_size, self._cache = nets, batch_size, {}

    def __call__(self, net: str, key: str, images: Tensor) -> np.ndarray:
        """``(N, D)`` float64 features of ``images`` from ``net`` (inception or classifier)."""
        from mvq.metrics import classifier_features, inception_features

        if (net, key) not in self._cache:
            if net == "inception":
                feats = inception_features(self.nets.inception, images, min(self.batch_size, 100))
            else:
                feats = classifier_features(self.nets.classifier.model, images, 1000)
            self._cache[net, key] = feats
        return self._cache[net, key]


def frechet_metrics(
    features: FeatureCache, key: str, images: Tensor, reference: Tensor, prefix: str, seed: int
) -> dict[str, float]:
    """``{prefix}fid`` and ``{prefix}fd_fmnist`` (+ the floor) for the loaded networks."""
    from mvq.metrics import fd_floor, frechet_distance

    out = {}
    if features.nets.inception is not None:
        fid = frechet_distance(
            features("inception", key, images), features("inception", "reference", reference)
        )
        out[f"{prefix}fid"] = fid
    if features.nets.classifier is not None:
        ref = features("classifier", "reference", reference)
        out[f"{prefix}fd_fmnist"] = frechet_distance(features("classifier", key, images), ref)
        out["fd_fmnist_floor"] = fd_floor(ref, seed)
    return out


def f_score_metrics(
    features: FeatureCache, images: Tensor, reference: Tensor, seed: int
) -> dict[str, float]:
    """PRD ``(F_8, F_1/8)`` on classifier and on Inception features (equal counts)."""
    from mvq.metrics import prd_f_scores

    m = min(len(images), len(reference))
    out = {}
    for net, suffix in (("classifier", ""), ("inception", "_inception")):
        if getattr(features.nets, net) is None:
            continue
        a = features(net, "samples", images)[:m]
        b = features(net, "reference", reference)[:m]
        out[f"sample_f8{suffix}"], out[f"sample_f1_8{suffix}"] = prd_f_scores(a, b, seed)
    return out


@torch.no_grad()
def pixel_metrics(
    recon: Tensor, target: Tensor, lpips_net: nn.Module | None, batch_size: int, prefix: str = ""
) -> dict[str, float]:
    """MSE ([-1, 1]), PSNR and SSIM ([0, 1], per image, mean) and LPIPS of float images."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from mvq.metrics import lpips_distance

    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    for i in range(0, len(recon), batch_size):
        x, y = recon[i : i + batch_size], target[i : i + batch_size]  # (B, C, H, W)
        sums["mse"] += float((x - y).pow(2).mean((1, 2, 3)).sum())
        xu, yu = (x + 1) / 2, (y + 1) / 2
        psnr = peak_signal_noise_ratio(xu, yu, data_range=1.0, reduction="none", dim=(1, 2, 3))
        sums["psnr"] += float(psnr.sum())
        ssim = structural_similarity_index_measure(xu, yu, data_range=1.0, reduction="none")
        sums["ssim"] += float(ssim.sum())
    out = {f"{prefix}{k}": v / len(recon) for k, v in sums.items()}
    if lpips_net is not None:
        out[f"{prefix}lpips"] = float(lpips_distance(lpips_net, recon, target, batch_size).mean())
    return out


def codebook_metrics(indices: Tensor, vocab: int, name: str) -> dict[str, float]:
    """``usage_{name}`` (fraction of entries used) and ``perplexity_{name}`` (exp entropy)."""
    counts = torch.bincount(indices.flatten().long(), minlength=vocab).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {
        f"usage_{name}": float((counts > 0).double().mean()),
        f"perplexity_{name}": float(entropy.exp()),
    }


@torch.no_grad()
def eval_reconstructions(
    tokenizer: nn.Module, images: Tensor, batch_size: int, seed: int, random_mask: bool = True
) -> tuple[Tensor, Tensor | None, Tokens]:
    """Reconstructions ``(N, C, H, W)`` in [-1, 1] of uint8 images, random-mask ones (MVQ,
    when asked) and the tokens (``encode_images``, MVQ's mask search seeded with ``seed``)."""
    device = next(tokenizer.parameters()).device
    tokens = encode_images(tokenizer, images, batch_size, torch.Generator(device).manual_seed(seed))
    generator = torch.Generator(device).manual_seed(seed)  # the random masks decode draws
    recon, random = [], []
    for i in range(0, len(images), batch_size):
        t = tokens[i : i + batch_size].to(device)
        recon.append(tokenizer.decode(t).clamp(-1, 1).cpu())
        if random_mask and t.mask is not None:  # the tokens with a random Bernoulli(0.5) mask
            bare = Tokens(t.indices, t.secondary)
            random.append(tokenizer.decode(bare, generator=generator).clamp(-1, 1).cpu())
    return torch.cat(recon), (torch.cat(random) if random else None), tokens


@torch.no_grad()
def prior_nll(
    prior: nn.Module, codes: dict[str, Tensor], labels: Tensor, batch_size: int
) -> dict[str, float]:
    """The prior's NLL on the split's tokens: nats per token and bits per image."""
    prior.eval()
    device = next(prior.parameters()).device
    nats, bits, n = 0.0, 0.0, len(codes["primary"])
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size].to(device) for k, v in codes.items()}
        batch |= {k: v.long() for k, v in batch.items() if k != "mask"}  # mask: packed uint8
        batch["label"] = labels[i : i + batch_size].to(device)
        _, logs = prior.loss(batch)
        nats += float(logs["nll"]) * len(batch["primary"])
        bits += float(logs["bits_per_image"]) * len(batch["primary"])
    return {"prior_nll_nats_per_token": nats / n, "prior_bits_per_image": bits / n}


def reconstruction_form(
    tokenizer: nn.Module,
    reference: Tensor,
    nets: Networks,
    request: EvalRequest,
    random_mask: bool = True,
) -> dict[str, float]:
    """Every reconstruction metric the loaded networks allow (see the module docstring)."""
    recon, random, tokens = eval_reconstructions(
        tokenizer, reference, request.batch_size, request.seed, random_mask
    )
    target = uint8_to_float(reference)
    features = FeatureCache(nets, request.batch_size)
    out = pixel_metrics(recon, target, nets.lpips, request.batch_size)
    out |= frechet_metrics(features, "recon", float_to_uint8(recon), reference, "", request.seed)
    layout = tokenizer.token_layout
    out |= codebook_metrics(tokens.indices, layout.primary_vocab, "primary")
    if tokens.secondary is not None and layout.secondary_vocab:
        out |= codebook_metrics(tokens.secondary, layout.secondary_vocab, "secondary")
    out["bits_per_image"] = float(tokenizer.bits_per_image)
    if random is not None:
        out |= pixel_metrics(random, target, nets.lpips, request.batch_size, "random_mask_")
        out |= frechet_metrics(
            features, "random_mask", float_to_uint8(random), reference, "random_mask_", request.seed
        )
    return out


def sample_form(
    images: Tensor, reference: Tensor, nets: Networks, request: EvalRequest
) -> dict[str, float]:
    """FID, fd_fmnist and the PRD F-scores of ``images`` (uint8) against ``reference``."""
    features = FeatureCache(nets, request.batch_size)
    out = frechet_metrics(features, "samples", images, reference, "sample_", request.seed)
    return out | f_score_metrics(features, images, reference, request.seed)


def sample_from_prior(
    tokenizer: nn.Module, prior: nn.Module, n: int, request: EvalRequest
) -> Tensor:
    """``n`` sampled images as uint8 (``mvq.sampling.pipeline``'s sampler; balanced labels if
    conditional)."""
    from mvq.sampling.pipeline import SampleOptions, sample_images

    classes = prior.config.num_classes
    labels = torch.arange(n) % classes if classes else None
    options = SampleOptions(batch_size=request.batch_size)
    images, _ = sample_images(tokenizer, prior, n, options, labels, request.seed)
    return float_to_uint8(images.cpu())


PIXEL = ("mse", "psnr", "ssim", "lpips", "fid", "fd_fmnist")
ORDER = (
    *PIXEL,
    "fd_fmnist_floor",
    "usage_primary",
    "usage_secondary",
    "perplexity_primary",
    "perplexity_secondary",
    "bits_per_image",
    *(f"random_mask_{p}" for p in PIXEL),
    "sample_fid",
    "sample_fd_fmnist",
    "sample_f8",
    "sample_f1_8",
    "sample_f8_inception",
    "sample_f1_8_inception",
    "prior_nll_nats_per_token",
    "prior_bits_per_image",
)
META_COLUMNS = ("time", "form", "tokenizer", "prior", "images", "data", "split", "n")


def group_of(name: str) -> str:
    """The ``--metrics`` group an eval.json name belongs to."""
    base = name.removeprefix("random_mask_")
    return GROUP_OF.get(base, base)


def select(metrics: dict[str, float], groups: tuple[str, ...]) -> dict[str, float]:
    """The metrics of the asked groups (``random_mask_X`` needs both random_mask and X)."""
    wanted = set(groups)
    if "random_mask" in wanted and not wanted & set(PIXEL):
        wanted |= {"mse", "psnr", "ssim"}  # `--metrics random_mask` alone: its cheap metrics
    return {
        name: value
        for name, value in metrics.items()
        if group_of(name) in wanted
        and (not name.startswith("random_mask_") or "random_mask" in wanted)
    }


def unavailable(
    form: str, groups: tuple[str, ...], nets: Networks, static: dict[str, str], has_mask: bool
) -> dict[str, str]:
    """``{eval.json name: reason}`` for every asked metric that cannot run."""
    out = dict(static)
    prefix = "" if form == "reconstruction" else "sample_"
    for group, reason in nets.missing.items():
        if group in groups:
            out[f"{prefix}{group}"] = reason
            if form == "reconstruction" and has_mask and "random_mask" in groups:
                out[f"random_mask_{group}"] = reason
    if form != "reconstruction" and "f_scores" in groups:
        if "fd_fmnist" in nets.missing:
            out["sample_f8"] = out["sample_f1_8"] = nets.missing["fd_fmnist"]
        if "fid" in groups and "fid" in nets.missing:
            reason = nets.missing["fid"]
            out["sample_f8_inception"] = out["sample_f1_8_inception"] = reason
    return out


def check_asked(asked: tuple[str, ...] | None, missing: dict[str, str], nets: Networks) -> None:
    """A metric asked by name that cannot run is an error (the first one's reason)."""
    if asked is None:
        return
    for group in asked:
        if group == "f_scores" and nets.classifier is None and nets.inception is None:
            raise EvalError(f"f_scores cannot run: {nets.missing.get('fd_fmnist', 'no features')}")
        reason = nets.missing.get(group) or next(
            (r for name, r in missing.items() if group_of(name) == group), None
        )
        if reason is not None and group != "f_scores":
            raise EvalError(f"{group} cannot run: {reason}")


def write_outputs(out: Path, result: dict) -> None:
    """``eval.json`` (atomically) and one more row of ``eval.csv`` (columns grow as needed)."""
    atomic_write_file(out / "eval.json", json.dumps(result, indent=2) + "\n")
    meta = result["meta"]
    row = {k: meta.get(k) for k in META_COLUMNS} | {
        k: v for k, v in result.items() if k not in ("meta", "unavailable")
    }
    path = out / "eval.csv"
    rows, columns = [], list(META_COLUMNS) + [k for k in ORDER if k in row]
    if path.is_file():
        reader = csv.DictReader(io.StringIO(path.read_text()))
        rows, columns = list(reader), list(reader.fieldnames or [])
        columns += [k for k in row if k not in columns]
    columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows([*rows, {k: "" if v is None else v for k, v in row.items()}])
    atomic_write_file(path, buffer.getvalue())


def format_table(result: dict) -> str:
    """A Markdown table: every metric, then every unavailable one with its reason."""
    meta = result["meta"]
    source = meta.get("tokenizer") or meta.get("images")
    lines = [
        f"mvq eval ({meta['form']}): {source}"
        + (f" + prior {meta['prior']}" if meta.get("prior") else "")
        + f" vs {meta['data']} {meta['split']} ({meta['reference_images']} images), "
        f"n={meta['n']}, {meta['device']}, {meta['seconds']:.1f} s",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    if meta.get("fd_fmnist_classifier"):
        from mvq.metrics.fd_fmnist import describe_classifier

        lines.insert(1, describe_classifier(meta["fd_fmnist_classifier"]))
    for name, value in result.items():
        if name not in ("meta", "unavailable"):
            lines.append(f"| {name} | {value:.6g} |")
    for name, reason in result["unavailable"].items():
        lines.append(f"| {name} | unavailable: {reason} |")
    return "\n".join(lines)


def ordered(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics in the documented order (others after)."""
    known = {k: metrics[k] for k in ORDER if k in metrics}
    return known | {k: v for k, v in metrics.items() if k not in known}


@torch.no_grad()
def encode_codes(tokenizer: nn.Module, images: Tensor, batch_size: int, seed: int) -> dict:
    """The tokens of uint8 images (``encode_images``, MVQ's mask search seeded with ``seed``)
    in the batch form of ``mvq.priors``."""
    device = next(tokenizer.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    return encode_images(tokenizer, images, batch_size, generator).to_batch()


def reference_subset(reference: Tensor, n: int, seed: int) -> Tensor:
    """``min(n, N)`` reference images: all of them, or a seeded random subset."""
    if n >= len(reference):
        return reference
    order = torch.randperm(len(reference), generator=torch.Generator().manual_seed(seed))
    return reference[order[:n].sort().values]


def load_models(request: EvalRequest, device: torch.device) -> tuple:
    """The tokenizer and prior (checked to belong together), on ``device``."""
    from mvq.priors import load_prior
    from mvq.sampling.pipeline import check_pair
    from mvq.tokenizers import load_tokenizer

    tokenizer = prior = None
    if request.tokenizer is not None:
        tokenizer = load_tokenizer(request.tokenizer).to(device).eval()
    if request.prior is not None:
        check_pair(request.tokenizer, request.prior, tokenizer)
        prior = load_prior(request.prior).to(device).eval()
    return tokenizer, prior


def classifier_record(spec: str) -> Path:
    """The ``<key>.json`` a ``--fd-classifier`` path names (given with or without a suffix)."""
    path = Path(spec).expanduser()
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return Path(f"{stem}.json")


def check_request(request: EvalRequest) -> None:
    """Combinations of options that make no sense."""
    if request.images is not None and (request.tokenizer or request.prior):
        raise EvalError("--images evaluates a folder on its own: drop --tokenizer/--prior")
    if request.images is None and request.tokenizer is None:
        raise EvalError("give --tokenizer DIR (with --prior DIR for samples) or --images DIR")
    if request.n is not None and request.n < 2:
        raise EvalError(f"-n must be at least 2, got {request.n}")
    if request.batch_size < 1:
        raise EvalError(f"--batch-size must be positive, got {request.batch_size}")
    spec = request.fd_classifier
    if spec not in ("shipped", "local") and not classifier_record(spec).is_file():
        raise EvalError(
            f"--fd-classifier {spec}: no such classifier record; give 'shipped' "
            "(mvq's, the default), 'local' (trained on the data at --root once) or "
            "the <key>.json of a classifier mvq saved"
        )


def static_unavailable(form: str, groups: tuple[str, ...], tokenizer, prior) -> dict[str, str]:
    """Metrics that do not apply to these models."""
    from mvq.priors import MaskGITPrior

    out = {}
    if (
        form == "reconstruction"
        and "random_mask" in groups
        and not tokenizer.token_layout.mask_bits
    ):
        out["random_mask"] = f"{type(tokenizer).__name__} has no mask (MVQ tokenizers only)"
    if form == "samples" and "prior_nll" in groups and isinstance(prior, MaskGITPrior):
        out["prior_nll"] = "MaskGIT's loss is a masked-token cross entropy, not a likelihood"
    return out


def compute(
    request: EvalRequest, groups: tuple[str, ...], models: tuple, data: tuple, nets: Networks
) -> dict:
    """The metrics of the request's form: ``groups`` as far as the loaded networks allow."""
    (tokenizer, prior), (reference, labels, images) = models, data
    if request.form == "reconstruction":
        subset = reference[: request.n] if request.n else reference
        return reconstruction_form(tokenizer, subset, nets, request, "random_mask" in groups)
    if request.form == "images":
        return sample_form(
            images, reference_subset(reference, len(images), request.seed), nets, request
        )
    metrics = sample_form(
        images, reference_subset(reference, len(images), request.seed), nets, request
    )
    metrics["bits_per_image"] = float(tokenizer.bits_per_image)
    if "prior_nll" in groups and not static_unavailable("samples", groups, tokenizer, prior):
        codes = encode_codes(tokenizer, reference, request.batch_size, request.seed)
        metrics |= prior_nll(prior, codes, labels, request.batch_size)
    return metrics


def run_eval(request: EvalRequest) -> dict:
    """Check everything, compute, then write ``eval.json`` and ``eval.csv``; returns the result.

    Nothing is written when the input is bad or a metric asked by name cannot run.
    """
    t0 = time.perf_counter()
    check_request(request)
    form = request.form
    asked = parse_metrics(request.metrics, form)
    groups = (
        asked
        or {"reconstruction": RECON_GROUPS, "samples": SAMPLE_GROUPS, "images": IMAGE_GROUPS}[form]
    )
    device = resolve_eval_device(request.device)
    tokenizer, prior = load_models(request, device)
    reference, labels = load_reference(request)
    shape = tuple(reference.shape[1:])
    if tokenizer is not None:
        c = tokenizer.config
        if shape != (c.in_channels, c.image_size, c.image_size):
            raise EvalError(
                f"{request.data} images are {shape} but the tokenizer takes "
                f"{(c.in_channels, c.image_size, c.image_size)}"
            )
    images = None
    if form == "images":
        images = load_image_folder(Path(request.images), shape)
    static = static_unavailable(form, groups, tokenizer, prior)
    nets = load_networks(request, groups, shape, device)
    missing = unavailable(
        form, groups, nets, static, bool(tokenizer and tokenizer.token_layout.mask_bits)
    )
    check_asked(asked, missing, nets)
    if form == "samples":
        images = sample_from_prior(tokenizer, prior, request.n or 10_000, request)
    metrics = compute(request, groups, (tokenizer, prior), (reference, labels, images), nets)
    metrics = select(metrics, groups) if asked else metrics
    meta = describe(request, device, reference, images, nets, time.perf_counter() - t0)
    result = ordered(metrics) | {"unavailable": missing, "meta": meta}
    write_outputs(Path(request.out), result)
    return result


def describe(request: EvalRequest, device, reference, images, nets, seconds: float) -> dict:
    """``eval.json``'s ``meta``: what was evaluated against what, where and when."""
    n = len(images) if images is not None else min(request.n or len(reference), len(reference))
    meta = {
        "form": request.form,
        "tokenizer": str(request.tokenizer) if request.tokenizer else None,
        "prior": str(request.prior) if request.prior else None,
        "images": str(request.images) if request.images else None,
        "data": request.data,
        "split": resolve_split(request.data, request.split),
        "n": n,
        "reference_images": n if request.form == "reconstruction" else min(n, len(reference)),
        "device": str(device),
        "seed": request.seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
    }
    if nets.classifier is not None:
        from mvq.metrics.fd_fmnist import classifier_identity

        meta["fd_fmnist_classifier"] = classifier_identity(nets.classifier.meta)
    return meta
