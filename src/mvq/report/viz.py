"""Figures of what a tokenizer's codes learned (MVQ paper §4.4, Figures 2, 6-9), and ``mvq viz``.

An MVQ instance is a primary code ``e`` (``(D, h, w)``, one codebook vector per primary token),
a secondary code ``e'`` (``(D', 1, 1)``) and a mask ``m`` in ``{0,1}^D'``; it decodes as
``D(e + f(e' ⊙ m))`` (paper eq. 5). A *masked configuration* is one pair ``(e', m)``; its
contribution ``f(e' ⊙ m)`` lives in the primary code space and can be added to any ``e``.

The figure functions are pure: they take a tokenizer and images ``(B, C, H, W)`` in [-1, 1]
and return image blocks ``(..., C, H, W)`` in [-1, 1] (``block_grid`` lays them out) or a
matplotlib ``Figure``. MVQ-only figures (``transfer``, ``compose``, ``dimensions``,
``diversity``) raise ``VizError`` for another tokenizer: the CLI prints one line, exit 2.
MVQ's ``encode`` searches masks with the global torch RNG: seed it for repeatable figures.

    mvq viz RUN_DIR --kind compose --out RUN_DIR/viz [--n 4] [--seed 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.utils import make_grid, save_image

from mvq.core.errors import MVQError
from mvq.core.pixels import to_unit
from mvq.core.pretrained import read_pretrained_meta
from mvq.core.tokens import Tokens, mask_index_to_bytes, pack_masks
from mvq.data import build_dataset
from mvq.quantizers.base import to_channel_first, to_channel_last
from mvq.tokenizers import ARCHITECTURES, MVQVAE, Tokenizer, load_tokenizer
from mvq.tokenizers.base import in_order
from mvq.training.config import DEVICE_HELP

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn: `mvq --help` stays quick
    from matplotlib.figure import Figure

MVQ_KINDS = ("transfer", "compose", "dimensions", "diversity")
TOKENIZER_KINDS = (*MVQ_KINDS, "reconstructions", "codebook")
KINDS = (*TOKENIZER_KINDS, "curves")
# (channels, image size) -> the data set a tokenizer of that input shape is usually trained on
DEFAULT_DATA = {(1, 28): "fashion_mnist", (3, 32): "cifar10"}
DEFAULT_N = {
    "transfer": 4,
    "compose": 3,
    "dimensions": 8,
    "diversity": 6,
    "reconstructions": 16,
    "codebook": 10_000,
    "curves": 0,
}


class VizError(MVQError, ValueError):
    """A figure cannot be made from this directory or tokenizer (one line, exit 2)."""


# -- MVQ parts --------------------------------------------------------------------------------
@dataclass
class MaskedCodes:
    """An MVQ instance split into what the figures recombine.

    Attributes:
        primary: ``e`` ``(B, D, h, w)``.
        secondary: ``e'`` after the quantizer's normalisation, ``(B, D', h', w')``.
        mask: the searched mask ``(B, D')`` bool.
    """

    primary: Tensor
    secondary: Tensor
    mask: Tensor


def require_mvq(model: Tokenizer, kind: str) -> MVQVAE:
    """``model`` if it is an MVQVAE, else a ``VizError`` naming the figure and the class."""
    if not isinstance(model, MVQVAE):
        raise VizError(
            f"figure '{kind}' needs an MVQVAE (masked secondary codes) but this tokenizer is a "
            f"{type(model).__name__}; its figures: reconstructions, codebook, curves"
        )
    return model


def split_codes(model: MVQVAE, tokens: Tokens) -> MaskedCodes:
    """``e``, normalised ``e'`` and the mask patterns of MVQ tokens (VQ or FSQ codes; a mask
    codebook's index looked up)."""
    q = model.quantizer
    e = q.primary.decode(tokens.indices)  # (B, D, h, w)
    code = q.norm(q.secondary.decode(tokens.secondary))  # (B, D', h', w')
    return MaskedCodes(e, code, q.mask_patterns(tokens.mask))


def pack_for(model: MVQVAE, masks: Tensor) -> Tensor:
    """The tokens' packed form of mask patterns ``(N, D')``: their bits, or with a mask
    codebook their indices in it (the patterns must be entries of the list)."""
    q = model.quantizer
    if not q.mask_codebook_size:
        return pack_masks(masks)
    book = q.mask_codebook.cpu()
    hits = (masks.cpu().bool()[:, None] == book[None]).all(-1)  # (N, J)
    if not hits.any(1).all():
        raise VizError("with a mask codebook only its own masks can be decoded")
    return mask_index_to_bytes(hits.float().argmax(1), q.mask_bits)


def masked_term(model: MVQVAE, secondary: Tensor, weights: Tensor, like: Tensor) -> Tensor:
    """``f(e' ⊙ m)`` ``(B, D, h, w)`` for codes ``(B, D', h', w')`` and mask weights ``(B, D')``.

    ``weights`` is a 0/1 mask or any real scaling of the secondary dimensions; a 1x1 output
    of f is broadcast over the primary grid of ``like`` ``(B, D, h, w)``, as in decoding.
    """
    c = secondary * weights.float()[..., None, None]  # (B, D', h', w')
    return model.quantizer.f(c).expand_as(like)


def decode_latent_sum(model: MVQVAE, latent: Tensor) -> Tensor:
    """Images ``D(latent)`` for primary-space codes ``(B, D, h, w)`` (e.g. ``e + f(e' ⊙ m)``)."""
    q = model.quantizer
    return model.decoder(to_channel_first(q.project_out(to_channel_last(latent))))


def random_masks(model: MVQVAE, n: int, generator: torch.Generator) -> Tensor:
    """``n`` masks ``(n, D')`` bool as generation draws them: each bit Bernoulli(mask_prob),
    or uniformly from the mask codebook."""
    q = model.quantizer
    if q.mask_codebook_size:
        return q.mask_codebook.cpu()[torch.randint(q.mask_codebook_size, (n,), generator=generator)]
    return torch.rand(n, q.secondary_dim, generator=generator) < q.mask_prob


# -- figures ----------------------------------------------------------------------------------
@torch.no_grad()
def transfer(
    model: Tokenizer, x: Tensor, masks: Tensor, encode_generator: torch.Generator | None = None
) -> Tensor:
    """Fig. 6a/9: the masked configurations of image 0 decoded with the primary code of each image.

    Configurations: ``e'_0`` with image 0's searched mask, then with each of ``masks``
    ``(M - 1, D')``. Row ``p``: image ``p``, then ``D(e_p + f(e'_0 ⊙ m_j))`` for each of the M
    masks; row 0 shows the configurations on their own primary code, the others the transfer.
    Returns ``(P, 1 + M, C, H, W)``.
    """
    mvq = require_mvq(model, "transfer")
    t = mvq.encode(x, encode_generator)
    own = mvq.quantizer.mask_patterns(t.mask[:1]).cpu()  # (1, D')
    masks = torch.cat([own, masks.cpu().bool()])  # (M, D')
    p, m = len(x), len(masks)
    tokens = Tokens(
        t.indices.repeat_interleave(m, 0),  # (P*M, h, w): each primary code M times
        t.secondary[:1].expand(p * m, *t.secondary.shape[1:]),  # e'_0 everywhere
        pack_for(mvq, masks.repeat(p, 1)).to(x.device),  # (P*M, bytes)
    )
    images = mvq.decode(tokens).unflatten(0, (p, m))  # (P, M, C, H, W)
    return torch.cat([x[:, None], images], 1)


def compose_images(model: MVQVAE, tokens: Tokens, masks: Tensor) -> Tensor:
    """Fig. 6b for one instance: a 3x3 grid of images ``(9, C, H, W)``, row-major.

    With ``e`` the instance's primary code, ``e'`` its (normalised) secondary code and
    ``t_i = f(e' ⊙ m_i)`` for the four ``masks`` ``(4, D')`` in the order top, left, right,
    bottom, every cell is the decoder applied to a sum in the primary code space:

        D(e + t_top + t_left)    D(e + t_top)     D(e + t_top + t_right)
        D(e + t_left)            D(e)             D(e + t_right)
        D(e + t_bottom + t_left) D(e + t_bottom)  D(e + t_bottom + t_right)

    The centre is the primary code alone; a corner adds both masked configurations of its two
    orthogonal neighbours (additive composition before the decoder).
    """
    parts = split_codes(model, tokens[:1])
    e = parts.primary  # (1, D, h, w)
    t = masked_term(
        model, parts.secondary.expand(4, -1, -1, -1), masks.to(e.device), e.expand(4, -1, -1, -1)
    )  # (4, D, h, w)
    top, left, right, bottom = t
    zero = torch.zeros_like(top)
    cells = [
        (top, left),
        (top, zero),
        (top, right),
        (left, zero),
        (zero, zero),
        (right, zero),
        (bottom, left),
        (bottom, zero),
        (bottom, right),
    ]
    latent = e + torch.stack([a + b for a, b in cells])  # (9, D, h, w)
    return decode_latent_sum(model, latent)


@torch.no_grad()
def compose(
    model: Tokenizer,
    x: Tensor,
    generator: torch.Generator,
    encode_generator: torch.Generator | None = None,
) -> Tensor:
    """``compose_images`` for each image with four random masks: ``(N, 9, C, H, W)``."""
    mvq = require_mvq(model, "compose")
    tokens = mvq.encode(x, encode_generator)
    return torch.stack(
        [
            compose_images(mvq, tokens[i : i + 1], random_masks(mvq, 4, generator))
            for i in range(len(x))
        ]
    )


DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


@torch.no_grad()
def dimensions(
    model: Tokenizer,
    x: Tensor,
    dims: list[int],
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    encode_generator: torch.Generator | None = None,
) -> Tensor:
    """Fig. 2: one secondary dimension at a time, switched on and scaled, on image ``x[:1]``.

    Row ``r`` keeps the image's searched mask except for dimension ``dims[r]``, whose weight
    runs through ``alphas``: 0 is the mask bit off, 1 the bit on (``e'_d`` as coded), values
    between interpolate and above 1 extrapolate: ``D(e + f(e' ⊙ w))``, ``w_d = alpha``.
    Returns ``(len(dims), len(alphas), C, H, W)``.
    """
    mvq = require_mvq(model, "dimensions")
    bad = [d for d in dims if not 0 <= d < mvq.quantizer.secondary_dim]
    if bad:
        raise VizError(f"dimensions {bad} out of range: D' = {mvq.quantizer.secondary_dim}")
    parts = split_codes(mvq, mvq.encode(x[:1], encode_generator))
    r, a = len(dims), len(alphas)
    weights = parts.mask.float().repeat(r * a, 1)  # (R*A, D')
    dev = weights.device
    rows = torch.tensor(dims, device=dev).repeat_interleave(a)  # (R*A,) the dimension changed
    weights[torch.arange(r * a, device=dev), rows] = torch.tensor(alphas, device=dev).repeat(r)
    e = parts.primary.expand(r * a, -1, -1, -1)
    code = parts.secondary.expand(r * a, -1, -1, -1)
    images = decode_latent_sum(mvq, e + masked_term(mvq, code, weights, e))
    return images.unflatten(0, (r, a))


@torch.no_grad()
def dimension_effects(
    model: Tokenizer, x: Tensor, encode_generator: torch.Generator | None = None
) -> Tensor:
    """How much each secondary dimension changes each image, ``(B, D')`` on the CPU: the mean
    |D(bit d on) - D(bit d off)| over pixels, the rest of the image's searched mask kept."""
    mvq = require_mvq(model, "dimensions")
    parts = split_codes(mvq, mvq.encode(x, encode_generator))
    effects = torch.zeros(len(x), mvq.quantizer.secondary_dim)
    for d in range(effects.shape[1]):
        on, off = parts.mask.float(), parts.mask.float()  # (B, D') each
        on[:, d], off[:, d] = 1.0, 0.0
        e, code = parts.primary, parts.secondary
        pair = [decode_latent_sum(mvq, e + masked_term(mvq, code, w, e)) for w in (on, off)]
        effects[:, d] = (pair[0] - pair[1]).abs().flatten(1).mean(1).cpu()
    return effects


def pick_dimensions(effects: Tensor, n: int) -> tuple[int, list[int]]:
    """The ``n`` dimensions most visible on average over ``effects`` ``(B, D')``, and the image
    on which they show most."""
    dims = effects.mean(0).argsort(descending=True)[:n]
    return int(effects[:, dims].sum(1).argmax()), dims.tolist()


@torch.no_grad()
def diversity(
    model: Tokenizer,
    x: Tensor,
    num_masks: int,
    generator: torch.Generator,
    encode_generator: torch.Generator | None = None,
) -> Tensor:
    """Fig. 8: each image's code vector (``e``, ``e'``) under ``num_masks`` random masks.

    Returns ``(N, num_masks, C, H, W)``: block ``n`` is ``D(e_n + f(e'_n ⊙ m_j))``.
    """
    mvq = require_mvq(model, "diversity")
    t = mvq.encode(x, encode_generator)
    n = len(x)
    masks = random_masks(mvq, n * num_masks, generator)  # (N*M, D')
    repeat = lambda v: v.repeat_interleave(num_masks, 0)  # noqa: E731  (N*M, ...)
    tokens = Tokens(repeat(t.indices), repeat(t.secondary), pack_for(mvq, masks).to(x.device))
    return mvq.decode(tokens).unflatten(0, (n, num_masks))


@torch.no_grad()
def reconstructions(
    model: Tokenizer, x: Tensor, encode_generator: torch.Generator | None = None
) -> Tensor:
    """Fig. 7: originals and ``decode(encode(x))``, ``(2, N, C, H, W)`` (any tokenizer)."""
    return torch.stack([x, model.decode(model.encode(x, encode_generator))])


@torch.no_grad()
def codebook_counts(
    model: Tokenizer,
    data: Dataset,
    batch_size: int = 250,
    encode_generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Uses of every code over ``data``: ``{"primary": (K1,), "secondary": (K2,)}`` int64,
    and for MVQ ``"mask bits"`` ``(D',)``: how often each mask bit is on."""
    layout = model.token_layout
    counts = {
        "primary": torch.zeros(layout.primary_vocab, dtype=torch.long),
        "secondary": torch.zeros(layout.secondary_vocab, dtype=torch.long),
    }
    if layout.mask_bits:  # bits of the patterns (a mask codebook's entries looked up)
        counts["mask bits"] = torch.zeros(model.quantizer.secondary_dim, dtype=torch.long)
    device = next(model.parameters()).device
    for x, _ in in_order(data, batch_size, encode_generator):
        t = model.encode(x.to(device), encode_generator).to("cpu")
        counts["primary"] += torch.bincount(t.indices.flatten(), minlength=layout.primary_vocab)
        counts["secondary"] += torch.bincount(
            t.secondary.flatten(), minlength=layout.secondary_vocab
        )
        if layout.mask_bits:
            counts["mask bits"] += model.quantizer.mask_patterns(t.mask.to(device)).cpu().sum(0)
    return counts


def plot_codebook(counts: dict[str, Tensor], num_images: int) -> Figure:
    """Bar charts of ``codebook_counts``, one panel per codebook, with usage and perplexity."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.2 * len(counts), 3.2), layout="constrained")
    for ax, (name, c) in zip(
        fig.subplots(1, len(counts), squeeze=False)[0], counts.items(), strict=True
    ):
        ax.bar(range(len(c)), c.numpy(), color="#4c72b0" if name != "mask bits" else "#dd8452")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "mask bits":
            ax.set_title(f"mask bits on ({num_images} images)")
            ax.set_xlabel("secondary dimension d")
            continue
        p = c.double() / max(int(c.sum()), 1)
        perplexity = math.exp(-float((p[p > 0] * p[p > 0].log()).sum()))
        used = int((c > 0).sum())
        ax.set_title(f"{name}: {used}/{len(c)} used, perplexity {perplexity:.2f}")
        ax.set_xlabel("code index")
    fig.supylabel("count")
    return fig


def read_metrics(path: str | Path) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """Read ``metrics.csv`` (step, split, name, value rows) as {(split, name): (steps, values)}."""
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            steps, values = series.setdefault((row["split"], row["name"]), ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return series


CURVE_NAMES = (
    "loss",
    "rec",
    "nll",
    "bits_per_image",
    "mhd",
    "primary_usage",
    "secondary_usage",
    "primary_perplexity",
    "mask_density",
)


def plot_curves(series: dict[tuple[str, str], tuple[list[int], list[float]]]) -> Figure:
    """Training (line) and validation (markers) curves of the main logged quantities."""
    from matplotlib.figure import Figure

    names = [n for n in CURVE_NAMES if any(k[1] == n for k in series)][:6]
    if not names:
        raise VizError("metrics.csv has none of the curves to plot: " + ", ".join(CURVE_NAMES))
    cols = min(3, len(names))
    fig = Figure(figsize=(4.2 * cols, 3.0 * math.ceil(len(names) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(names) / cols), cols, squeeze=False).flatten()
    for ax, name in zip(axes, names, strict=False):  # more axes than names
        for split, style in (("train", "-"), ("val", "o-")):
            if (split, name) in series:
                ax.plot(*series[(split, name)], style, label=split, markersize=4)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig


# -- layout -----------------------------------------------------------------------------------
def block_grid(images: Tensor, blocks_per_row: int = 1, padding: int = 2) -> Tensor:
    """Lay out image blocks in [-1, 1] as one picture ``(3, H', W')`` in [0, 1].

    ``images`` is ``(R, K, C, H, W)`` (one block: R rows of K images) or
    ``(N, R, K, C, H, W)`` (N blocks, ``blocks_per_row`` of them per row, 4x the padding
    between blocks). Padding is white.
    """
    unit = to_unit(images).cpu()
    if unit.dim() == 5:
        return make_grid(unit.flatten(0, 1), nrow=unit.shape[1], padding=padding, pad_value=1.0)
    blocks = torch.stack([block_grid(b, padding=padding) for b in images])  # (N, 3, h, w)
    return make_grid(blocks, nrow=blocks_per_row, padding=4 * padding, pad_value=1.0)


def upscale(grid: Tensor, image_size: int) -> Tensor:
    """Enlarge a grid of small images (nearest) so that each is at least ~84 pixels wide."""
    scale = max(1, 84 // image_size)
    return F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else grid


# -- directories, data and the command --------------------------------------------------------
@dataclass
class VizSource:
    """What a directory offers: a run (``metrics.csv``) and/or a saved tokenizer.

    Attributes:
        run_dir: the training run, when ``metrics.csv`` is there.
        model_dir: the saved tokenizer (``run_dir/model`` or the directory itself), if any.
        model_class: class name saved in the model's ``config.json`` (a prior's too).
    """

    run_dir: Path | None
    model_dir: Path | None
    model_class: str | None = None

    @property
    def has_tokenizer(self) -> bool:
        """Whether ``model_dir`` holds a tokenizer (not a prior)."""
        names = {cls.__name__ for cls in ARCHITECTURES.values()}
        return self.model_dir is not None and self.model_class in names


def resolve_source(path: str | Path) -> VizSource:
    """A run directory (with ``model/`` and/or ``metrics.csv``) or a saved model directory."""
    path = Path(path)
    if not path.is_dir():
        raise VizError(f"{path} is not a directory: pass a run directory or a saved model")
    model_dir = next((d for d in (path / "model", path) if (d / "config.json").is_file()), None)
    run_dir = next((d for d in (path, path.parent) if (d / "metrics.csv").is_file()), None)
    if model_dir is None and run_dir is None:
        raise VizError(f"{path} holds neither a saved model (config.json) nor metrics.csv")
    model_class = read_pretrained_meta(model_dir)["class"] if model_dir else None
    return VizSource(run_dir, model_dir, model_class)


def default_data(model: Tokenizer) -> str:
    """The data set for a tokenizer's input shape (1x28x28: Fashion-MNIST, 3x32x32: CIFAR-10)."""
    c = model.config
    if (c.in_channels, c.image_size) not in DEFAULT_DATA:
        raise VizError(
            f"no default data set for {c.in_channels}x{c.image_size}x{c.image_size} images: "
            "pass --data NAME"
        )
    return DEFAULT_DATA[(c.in_channels, c.image_size)]


def pick_images(data: Dataset, n: int, generator: torch.Generator) -> Tensor:
    """``n`` images ``(n, C, H, W)`` of ``data`` at random (seeded) positions."""
    order = torch.randperm(len(data), generator=generator)[:n]  # type: ignore[arg-type]
    return torch.stack([data[int(i)][0] for i in order])


@dataclass
class VizOptions:
    """How to draw: ``n`` instances (``None``: the kind's default), seed, data, device."""

    n: int | None = None
    seed: int = 0
    data: str | None = None
    data_root: str | None = None
    split: str = "val"
    dims: list[int] | None = None
    device: str = "cpu"


def tokenizer_figure(
    kind: str, model: Tokenizer, data: Dataset, opts: VizOptions
) -> Tensor | Figure:
    """The ``kind`` figure of a loaded tokenizer on ``data``: a grid ``(3, H, W)`` or a Figure."""
    if kind in MVQ_KINDS:
        require_mvq(model, kind)
    n = opts.n or DEFAULT_N[kind]
    g = torch.Generator().manual_seed(opts.seed)  # images and random masks, on the CPU
    device = next(model.parameters()).device
    enc = torch.Generator(device).manual_seed(opts.seed)  # MVQ's mask search in encode
    if kind == "codebook":
        subset = Subset(data, range(min(n, len(data))))  # type: ignore[arg-type]
        return plot_codebook(codebook_counts(model, subset, encode_generator=enc), len(subset))
    x = pick_images(data, 16 if kind == "dimensions" else n, g).to(device)
    if kind == "transfer":
        return block_grid(transfer(model, x, random_masks(model, 6, g), enc))  # type: ignore[arg-type]
    if kind == "compose":
        return block_grid(compose(model, x, g, enc).unflatten(1, (3, 3)), blocks_per_row=n)
    if kind == "dimensions":
        image, top = pick_dimensions(dimension_effects(model, x, enc), n)
        dims = opts.dims if opts.dims is not None else top
        return block_grid(dimensions(model, x[image : image + 1], dims, encode_generator=enc))
    if kind == "diversity":
        return block_grid(diversity(model, x, 8, g, enc).unflatten(1, (2, 4)), blocks_per_row=3)
    if kind == "reconstructions":
        cols = min(n, 8)  # blocks of 8 originals over their 8 reconstructions
        pairs = reconstructions(model, x[: n - n % cols], enc)  # (2, N, C, H, W)
        return block_grid(pairs.unflatten(1, (-1, cols)).transpose(0, 1))
    raise VizError(f"unknown figure '{kind}'; choose one of {', '.join(KINDS)}")


def figure_png(figure: Tensor | Figure, path: Path, image_size: int) -> Path:
    """Save a grid (upscaled) or a matplotlib figure as PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(figure, Tensor):
        save_image(upscale(figure, image_size), path)
    else:
        figure.savefig(path, dpi=110)
    return path


def available_kinds(source: VizSource, model: Tokenizer | None) -> list[str]:
    """The figures that make sense for this directory."""
    kinds = []
    if model is not None:
        kinds = [k for k in TOKENIZER_KINDS if isinstance(model, MVQVAE) or k not in MVQ_KINDS]
    return kinds + (["curves"] if source.run_dir is not None else [])


def load_source_model(source: VizSource, device: str) -> Tokenizer | None:
    """The directory's tokenizer in eval mode on ``device`` (None if it holds none)."""
    if not source.has_tokenizer:
        return None
    from mvq.core.device import resolve_device

    dev = resolve_device(device)
    return load_tokenizer(source.model_dir).to(dev).eval()  # type: ignore[arg-type]


def load_data(model: Tokenizer, opts: VizOptions) -> Dataset:
    """The split ``opts.split`` of ``opts.data`` (default: by the tokenizer's input shape)."""
    c = model.config
    return build_dataset(
        opts.data or default_data(model),
        opts.data_root,
        opts.split,
        image_size=c.image_size,
        download=False,
    )


def make_figure(
    kind: str, source: VizSource, model: Tokenizer | None, opts: VizOptions
) -> Tensor | Figure:
    """The ``kind`` figure of a resolved directory (a ``VizError`` when it does not apply)."""
    if kind == "curves":
        if source.run_dir is None:
            raise VizError(
                f"figure 'curves' needs a run directory with metrics.csv, "
                f"{source.model_dir} is a saved model only"
            )
        return plot_curves(read_metrics(source.run_dir / "metrics.csv"))
    if kind not in TOKENIZER_KINDS:
        raise VizError(f"unknown figure '{kind}'; choose one of {', '.join(KINDS)}, all")
    if model is None:
        what = f"a {source.model_class}" if source.model_class else "no saved model"
        raise VizError(f"figure '{kind}' needs a tokenizer, {source.run_dir} holds {what}")
    if kind in MVQ_KINDS:
        require_mvq(model, kind)  # before loading any data
    return tokenizer_figure(kind, model, load_data(model, opts), opts)


def write_figures(
    path: str | Path, kinds: list[str], out: str | Path, opts: VizOptions
) -> dict[str, str]:
    """Write ``<out>/<kind>.png`` for each kind (``["all"]``: every one that applies)."""
    source = resolve_source(path)
    model = load_source_model(source, opts.device)
    if kinds == ["all"]:
        kinds = available_kinds(source, model)
    size = model.config.image_size if model is not None else 28
    written = {}
    for kind in kinds:
        figure = make_figure(kind, source, model, opts)
        written[kind] = str(figure_png(figure, Path(out) / f"{kind}.png", size))
    return written


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``mvq viz``."""
    ap.add_argument("dir", help="a run directory (with model/ or metrics.csv) or a saved model")
    ap.add_argument("--kind", required=True, choices=[*KINDS, "all"], help="which figure")
    ap.add_argument("--out", required=True, help="folder for <kind>.png")
    ap.add_argument(
        "--n",
        type=int,
        help="instances: primary codes (transfer), grids (compose), "
        "dimensions, code vectors (diversity), images (reconstructions, codebook)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the images and masks drawn")
    ap.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default: cpu)")
    ap.add_argument("--data", help="data set (default: by image shape; 1x28x28: fashion_mnist)")
    ap.add_argument("--data-root", help="data set folder (default: the data set's usual place)")
    ap.add_argument("--split", default="val", help="split the images come from")
    ap.add_argument(
        "--dims",
        help="dimensions: comma-separated secondary dimensions (default: the --n most visible)",
    )


def run(args: argparse.Namespace) -> dict[str, str]:
    """``mvq viz``: write the figures, return {kind: path}."""
    if args.n is not None and args.n < 1:
        raise VizError(f"--n must be a positive number, got {args.n}")
    try:
        dims = [int(d) for d in args.dims.split(",")] if args.dims else None
    except ValueError:
        raise VizError(f"--dims must be comma-separated integers, got '{args.dims}'") from None
    opts = VizOptions(args.n, args.seed, args.data, args.data_root, args.split, dims, args.device)
    return write_figures(args.dir, [args.kind], args.out, opts)
