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

The job is this module; the table of metrics is ``mvq.eval.metrics_table``, their
computation ``mvq.eval.forms``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mvq.core.pixels import float_to_uint8
from mvq.data import build_dataset
from mvq.data.folder import list_images
from mvq.eval.forms import (
    encode_codes,
    prior_nll,
    reconstruction_form,
    reference_subset,
    sample_form,
    sample_from_prior,
)
from mvq.eval.metrics_table import (
    FORM_GROUPS,
    EvalError,
    EvalRequest,
    Networks,
    check_asked,
    ordered,
    parse_metrics,
    select,
    unavailable,
    write_outputs,
)


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
    metrics = sample_form(
        images, reference_subset(reference, len(images), request.seed), nets, request
    )
    if request.form == "images":
        return metrics
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
    groups = asked or FORM_GROUPS[form]
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
