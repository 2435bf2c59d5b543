"""The metrics of each form of ``mvq eval``: reconstructions (pixels, Fréchet distances,
codebook use, the random-mask decoding), samples and image folders (Fréchet distances, PRD
F-scores), the prior's NLL; features computed once per image set."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mvq.core.pixels import float_to_uint8, uint8_to_float
from mvq.core.tokens import Tokens
from mvq.eval.metrics_table import EvalRequest, Networks
from mvq.tokenizers import encode_images


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


def aten_convolutions() -> AbstractContextManager[Any]:
    """CPU convolutions by ATen's own kernels instead of oneDNN's for a block: SSIM's 11x11
    Gaussian filters single-channel maps, which ATen's im2col path runs 3-4x faster on a CPU
    (10,000 28x28 images: 1.5 s vs 4.9 s, one thread, Xeon; the values agree to 1e-6)."""
    return torch.backends.mkldnn.flags(
        enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None
    )


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
        with aten_convolutions():
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
