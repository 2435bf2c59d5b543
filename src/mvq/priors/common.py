"""What every token prior shares: its layout, batch checks, NLL logs and the registry.

A token batch is a dict: ``"primary"`` ``(B, h, w)`` int64 in ``[0, K1)``, optionally
``"secondary"`` ``(B, h2, w2)`` int64 in ``[0, K2)`` (MVQ and VQ-VAE-2: ``h2 = w2 = 1``) and
``"label"`` ``(B,)`` int64 class labels, and for MVQ ``"mask"`` ``(B, ceil(D'/8))`` the packed
mask bytes. By default the mask is not modelled (the paper draws it at random at generation
time) and ``"mask"`` is ignored; a prior with ``model_mask=True`` models it as ``D'/b`` extra
tokens of ``b = mask_token_bits`` bits after the secondary tokens, or, when the mask is a mask
codebook's index (``mask_codebook_size`` = J), as one token of vocabulary J.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mvq.core.registry import Registry
from mvq.core.tokens import TokenLayout, mask_to_tokens

PRIORS: Registry[nn.Module] = Registry("prior")

LN2 = math.log(2.0)


@dataclass
class PriorLayout(TokenLayout):
    """The token layout a prior models; every ``<Name>PriorConfig`` extends it.

    The tokens' own fields are ``TokenLayout``'s (``mvq.core.tokens``), so
    ``layout_overrides(tokenizer.token_layout)`` gives the overrides for ``create_prior``; the
    defaults are 4x4 + 1 tokens with K = 128 + 128; grids are modelled in raster order. What the
    prior adds:

    Attributes:
        num_classes: number of class labels for class conditioning; 0 = unconditional.
        model_mask: model the mask as ``mask_len`` tokens after the secondary tokens (priors
            that support it; default False, as the paper: the mask is drawn at random).
        mask_token_bits: b, mask bits per mask token (vocabulary ``2**b``); not used for a mask
            codebook's index, which is always one token of vocabulary J.
    """

    primary_vocab: int = 128
    primary_grid: tuple[int, int] = (4, 4)
    secondary_vocab: int = 128
    num_classes: int = 0
    model_mask: bool = False
    mask_token_bits: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}"
            )
        if not 1 <= self.mask_token_bits <= 12:
            raise ValueError(f"mask_token_bits must be in [1, 12], got {self.mask_token_bits}")
        if self.model_mask and (self.mask_bits == 0 or not self.has_secondary):
            raise ValueError(
                "model_mask=True but the tokens have no MVQ mask (mask_bits=0) or no secondary "
                "stream: only MVQ tokens carry a mask; set model_mask=false"
            )

    @property
    def mask_token_width(self) -> int:
        """Bits per mask token: log2 J for a mask codebook's index (one token), else b."""
        return self.mask_bits if self.mask_is_index else self.mask_token_bits

    @property
    def mask_len(self) -> int:
        """M = ceil(D' / b) mask tokens per instance (1 for a mask codebook's index) when the
        mask is modelled, else 0."""
        return -(-self.mask_bits // self.mask_token_width) if self.model_mask else 0

    @property
    def mask_vocab(self) -> int:
        """Values of a mask token (2**b; J for a mask codebook's index), 0 when the mask is
        not modelled."""
        return 2**self.mask_token_width if self.model_mask else 0

    @property
    def num_tokens(self) -> int:
        """S + S' + M, modelled tokens per instance (M mask tokens when the mask is modelled)."""
        return self.primary_len + self.secondary_len + self.mask_len


def refuse_mask_model(layout: PriorLayout, prior: str) -> None:
    """A prior that cannot model the MVQ mask refuses ``model_mask=True`` with one line."""
    if layout.model_mask:
        raise ValueError(
            f"{prior} does not model the MVQ mask: set model_config.model_mask=false (the mask is "
            "then drawn at random) or use a transformer or MaskGIT prior"
        )


class TokenBatch(NamedTuple):
    """A checked batch: ``primary`` (B, h, w), ``secondary`` (B, h2, w2) or None, ``labels``,
    and ``mask`` ``(B, M)`` int64 mask tokens when the prior models the mask, else None."""

    primary: Tensor
    secondary: Tensor | None
    labels: Tensor | None
    mask: Tensor | None = None


def _check_stream(tokens: object, name: str, vocab: int, grid: tuple[int, int]) -> Tensor:
    """One stream's tokens as int64 ``(B, h, w)``; a mismatch is one clear ``ValueError``."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} tokens must be integer code indices, got dtype {tokens.dtype}")
    if tokens.dim() != 3 or tuple(tokens.shape[1:]) != tuple(grid):
        got = (
            "x".join(map(str, tokens.shape[1:])) if tokens.dim() == 3 else str(tuple(tokens.shape))
        )
        raise ValueError(
            f"{name} tokens have grid {got} but the prior was built for {grid[0]}x{grid[1]} "
            f"(expected shape (B, {grid[0]}, {grid[1]})): encode with the same tokenizer or "
            "rebuild the prior"
        )
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0:
            raise ValueError(
                f"{name} tokens contain negative index {lo}: they are not code indices"
            )
        if hi >= vocab:
            raise ValueError(
                f"{name} tokens have vocab {hi + 1} but the prior was built for {vocab}: "
                "encode with the same tokenizer or rebuild the prior"
            )
    return tokens.long()


def check_labels(labels: object, num_classes: int, batch_size: int) -> Tensor | None:
    """Checked ``(B,)`` int64 labels for a prior with ``num_classes`` (0 = unconditional)."""
    if num_classes == 0:
        return None
    if labels is None:
        raise ValueError(
            f"the prior is class-conditional ({num_classes} classes) but no labels were given: "
            "pass batch['label'] / labels=... as (B,) class indices"
        )
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels!r:.80}")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise ValueError(
            f"class label {bad} is out of range for a prior with {num_classes} classes "
            f"(labels must be in [0, {num_classes}))"
        )
    return labels.long()


def check_batch(batch: object, layout: PriorLayout) -> TokenBatch:
    """Validate a token batch against ``layout``; any mismatch is one clear ``ValueError``.

    Labels are ignored by unconditional priors (a dataset may always carry them).
    """
    if not isinstance(batch, dict) or "primary" not in batch:
        raise TypeError(
            "a token batch is a dict with 'primary' (B, h, w) int64 tokens, optional "
            f"'secondary' and 'label'; got {type(batch).__name__}"
            + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "")
        )
    primary = _check_stream(batch["primary"], "primary", layout.primary_vocab, layout.primary_grid)
    secondary = batch.get("secondary")
    if layout.has_secondary and secondary is None:
        raise ValueError(
            f"the prior models {layout.secondary_len} secondary token(s) (vocab "
            f"{layout.secondary_vocab}) but the batch has no 'secondary': encode with the same "
            "tokenizer or rebuild the prior with secondary_vocab=0"
        )
    if not layout.has_secondary and secondary is not None:
        raise ValueError(
            "the batch has 'secondary' tokens but the prior was built without a secondary "
            "stream (secondary_vocab=0): rebuild it with the tokenizer's secondary vocabulary"
        )
    if secondary is not None:
        secondary = _check_stream(
            secondary, "secondary", layout.secondary_vocab, layout.secondary_grid
        )
        if secondary.shape[0] != primary.shape[0]:
            raise ValueError(
                f"batch sizes differ: {primary.shape[0]} primary vs {secondary.shape[0]} secondary"
            )
    labels = check_labels(batch.get("label"), layout.num_classes, primary.shape[0])
    return TokenBatch(primary, secondary, labels, _check_mask(batch, layout, primary.shape[0]))


def _check_mask(batch: dict, layout: PriorLayout, batch_size: int) -> Tensor | None:
    """The batch's packed mask as ``(B, M)`` tokens when the prior models it, else None."""
    if not layout.model_mask:
        return None
    packed = batch.get("mask")
    nbytes = (layout.mask_bits + 7) // 8
    if packed is None:
        raise ValueError(
            "the prior models the MVQ mask (model_mask=True) but the batch has no 'mask': "
            "encode the tokens with `mvq encode` from an MVQ tokenizer"
        )
    if not isinstance(packed, Tensor) or tuple(packed.shape) != (batch_size, nbytes):
        got = tuple(packed.shape) if isinstance(packed, Tensor) else type(packed).__name__
        raise ValueError(
            f"'mask' must be packed mask bytes of shape ({batch_size}, {nbytes}) for "
            f"mask_bits={layout.mask_bits}, got {got}"
        )
    if packed.is_floating_point() or int(packed.min()) < 0 or int(packed.max()) > 255:
        raise ValueError("'mask' must hold packed mask bytes (integers in [0, 255])")
    return mask_to_tokens(packed.to(torch.uint8), layout.mask_bits, layout.mask_token_width)


def nll_logs(
    ce_primary: Tensor, ce_secondary: Tensor | None, ce_mask: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean cross-entropy over all tokens and the shared logs, from per-token CE ``(B, S)``.

    Returns ``(loss, logs)``: ``loss`` in nats per token; logs ``nll``, ``nll_primary``,
    ``nll_secondary`` / ``nll_mask`` (when present) and ``bits_per_image`` (summed over an
    instance's tokens, mask tokens included; ``mask_bits_per_image`` is their share).
    """
    parts = [ce for ce in (ce_primary, ce_secondary, ce_mask) if ce is not None]
    per_token = torch.cat(parts, 1)  # (B, S + S' + M)
    loss = per_token.mean()
    logs = {"nll": loss.detach(), "nll_primary": ce_primary.detach().mean()}
    if ce_secondary is not None:
        logs["nll_secondary"] = ce_secondary.detach().mean()
    if ce_mask is not None:
        logs["nll_mask"] = ce_mask.detach().mean()
        logs["mask_bits_per_image"] = ce_mask.detach().sum(1).mean() / LN2
    logs["bits_per_image"] = per_token.detach().sum(1).mean() / LN2
    return loss, logs
