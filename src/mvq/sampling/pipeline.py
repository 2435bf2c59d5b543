"""Sample images: a prior draws tokens, the tokenizer decodes them (``mvq sample``).

For MVQ the mask is drawn by ``decode`` from Bernoulli(0.5) per image with the same seeded
generator (the paper's choice; with a mask codebook, an index uniformly from its J masks),
unless the prior models the mask (``model_mask=True``): then the sampled mask is used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.utils import save_image

from mvq.core.errors import ConfigError
from mvq.core.pixels import to_unit
from mvq.core.pretrained import CheckpointError, resolve_pretrained
from mvq.core.token_files import tokenizer_identity
from mvq.core.tokens import Tokens
from mvq.priors import MaskGITPrior, PixelCNNPrior, TransformerPrior, load_prior
from mvq.sampling import SCHEDULES, sample_autoregressive, sample_maskgit, sample_pixelcnn
from mvq.sampling.common import check_sampling_args
from mvq.tokenizers import Tokenizer, load_tokenizer
from mvq.training.prior_job import TOKENIZER_FILE

SAMPLERS: dict[type, Callable[..., dict[str, Tensor]]] = {
    TransformerPrior: sample_autoregressive,
    PixelCNNPrior: sample_pixelcnn,
    MaskGITPrior: sample_maskgit,
}


@dataclass
class SampleOptions:
    """Sampler options; ``steps`` (None: min(8, tokens per image)) and ``schedule`` are
    MaskGIT's."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    steps: int | None = None
    schedule: str = "cosine"
    batch_size: int = 64

    def for_prior(self, prior: nn.Module) -> dict:
        opts = {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "batch_size": self.batch_size,
        }
        if isinstance(prior, MaskGITPrior):
            steps = self.steps or min(8, prior.config.num_tokens)
            opts |= {"steps": steps, "schedule": self.schedule}
        return opts


def check_options(options: SampleOptions, n: int, labels: int | None, prior: nn.Module) -> None:
    """A one-line ``ConfigError`` for a sampling option out of range, before sampling starts."""
    o = options
    try:
        check_sampling_args(n, o.temperature, o.top_k, o.top_p, o.batch_size)
    except ValueError as err:
        raise ConfigError(f"mvq sample: {err}") from None
    if options.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {options.schedule}: choose one of {', '.join(SCHEDULES)}")
    if options.steps is not None and options.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {options.steps}")
    classes = prior.config.num_classes
    if labels is not None and not 0 <= labels < classes:
        what = f"one of 0 to {classes - 1}" if classes else "none: the prior is unconditional"
        raise ConfigError(f"--label {labels} is not a class of this prior ({what})")


def check_pair(tokenizer_dir: str | Path, prior_dir: str | Path, tokenizer: Tokenizer) -> None:
    """The prior must have been trained on tokens of exactly this tokenizer."""
    path = Path(prior_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{prior_dir} has no {TOKENIZER_FILE}: train it with `mvq train-prior`"
        )
    expected = json.loads(path.read_text())
    actual = tokenizer_identity(tokenizer, tokenizer_dir)
    if expected["sha256"] != actual["sha256"]:
        raise CheckpointError(
            f"the prior in {prior_dir} was trained on tokens of another tokenizer "
            f"({expected['class']} {expected['sha256'][:12]}, not {actual['class']} "
            f"{actual['sha256'][:12]} in {tokenizer_dir}): use the tokenizer it was trained on"
        )


@torch.no_grad()
def sample_images(
    tokenizer: Tokenizer,
    prior: nn.Module,
    n: int,
    options: SampleOptions | None = None,
    labels: Tensor | int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tokens]:
    """``n`` images ``(n, C, H, W)`` in [-1, 1] and their tokens (prior, then decode)."""
    options = options or SampleOptions()
    sampler = SAMPLERS.get(type(prior))
    if sampler is None:
        raise TypeError(f"no sampler for {type(prior).__name__}; priors: {list(SAMPLERS)}")
    device = next(prior.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    drawn = sampler(prior, n, labels=labels, generator=generator, **options.for_prior(prior))
    tokens = Tokens.from_batch(drawn)
    tokenizer.eval()
    images = torch.cat(
        [
            tokenizer.decode(tokens[i : i + options.batch_size].to(device), generator=generator)
            for i in range(0, n, options.batch_size)
        ]
    )
    return images.clamp(-1.0, 1.0), tokens  # the decoder is unbounded; data live in [-1, 1]


def write_samples(images: Tensor, out: str | Path, nrow: int = 16) -> Path:
    """One PNG per image (``00000.png`` ...) and ``grid.png`` of the first 256."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unit = to_unit(images.cpu())
    for i, img in enumerate(unit):
        save_image(img, out / f"{i:05d}.png")
    save_image(unit[:256], out / "grid.png", nrow=nrow, padding=1)
    return out / "grid.png"


def run_sample(
    tokenizer_dir: str | Path,
    prior_dir: str | Path,
    n: int,
    out: str | Path,
    options: SampleOptions,
    labels: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Load, check the pair, sample on ``device``, write; returns timing figures."""
    tokenizer_dir, prior_dir = resolve_pretrained(tokenizer_dir), resolve_pretrained(prior_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    check_pair(tokenizer_dir, prior_dir, tokenizer)  # hashes the weights before moving them
    prior = load_prior(prior_dir).eval()
    check_options(options, n, labels, prior)
    tokenizer.to(device)
    prior.to(device)
    t0 = time.perf_counter()
    images, _ = sample_images(tokenizer, prior, n, options, labels, seed)
    seconds = time.perf_counter() - t0
    grid = write_samples(images, out)
    return {"images": n, "seconds": seconds, "seconds_per_image": seconds / n, "grid": str(grid)}
