"""The token contract: what a tokenizer emits and a prior models (imports torch only).

An image is described by S primary indices on an ``h x w`` grid (vocabulary K1), S' secondary
indices on an ``h2 x w2`` grid (vocabulary K2; ``1 x 1`` for MVQ and VQ-VAE-2) and, for MVQ
only, a D'-bit mask, or with a mask codebook (a fixed list of J masks) the mask's index in
log2 J bits. This module owns

- ``Tokens``: a batch of them (primary and secondary indices, MVQ's packed mask), and the one
  conversion to and from a prior's batch dict (``to_batch`` / ``from_batch``);
- ``TokenLayout``: their shape (vocabularies, grids, mask bits) and its checks; a tokenizer's
  ``token_layout`` is one, a prior's config (``mvq.priors.PriorLayout``) extends it;
- ``layout_overrides``: a layout as config overrides for ``mvq.priors.create_prior``;
- ``pack_masks`` / ``unpack_masks``: the mask's bit packing (8 bits per byte, LSB first);
- ``mask_to_tokens`` / ``tokens_to_mask``: the mask as ``ceil(D'/b)`` tokens of b bits, the
  form in which a prior models it (a mask codebook's index: one token of log2 J bits).

Tokens on disk (token files, token directories) are ``mvq.core.token_files``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LAYOUT_FIELDS = (
    "primary_vocab",
    "primary_grid",
    "secondary_vocab",
    "secondary_grid",
    "mask_bits",
    "mask_codebook_size",
)


@dataclass
class Tokens:
    """The discrete description of a batch.

    Attributes:
        indices: primary code indices, ``(B, *spatial)`` int64.
        secondary: secondary code indices ``(B, *spatial')`` (MVQ, hierarchical models) or None.
        mask: MVQ only: the chosen MH-Dropout masks packed 8 bits per byte, ``(B, ceil(D'/8))``
            uint8, bit ``d`` of the pattern is bit ``d % 8`` of byte ``d // 8``. With a mask
            codebook (``TokenLayout.mask_codebook_size`` = J) it holds the chosen mask's index
            instead, its log2 J bits packed the same way, ``(B, ceil(log2 J / 8))``
            (``mask_index_to_bytes``).
    """

    indices: Tensor
    secondary: Tensor | None = None
    mask: Tensor | None = None

    def to(self, device: torch.device | str) -> Tokens:
        """Move every present tensor to ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Tokens(move(self.indices), move(self.secondary), move(self.mask))

    def __getitem__(self, item: int | slice | Tensor) -> Tokens:
        """Select instances along the batch dimension."""
        pick = lambda t: None if t is None else t[item]  # noqa: E731
        return Tokens(pick(self.indices), pick(self.secondary), pick(self.mask))

    @staticmethod
    def cat(parts: Sequence[Tokens]) -> Tokens:
        """Batches of tokens joined along the batch dimension."""
        join = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return Tokens(
            *(join([getattr(t, n) for t in parts]) for n in ("indices", "secondary", "mask"))
        )

    def to_batch(self) -> dict[str, Tensor]:
        """The batch form of ``mvq.priors``: ``{"primary", "secondary", "mask"}``, the keys of
        the tensors present (add ``"label"`` for a conditional prior)."""
        batch = {"primary": self.indices, "secondary": self.secondary, "mask": self.mask}
        return {k: v for k, v in batch.items() if v is not None}

    @classmethod
    def from_batch(cls, batch: Mapping[str, Tensor]) -> Tokens:
        """Inverse of ``to_batch`` (a prior's batch or a sampler's output; ``"label"`` is
        ignored)."""
        return cls(batch["primary"], batch.get("secondary"), batch.get("mask"))


@dataclass
class TokenLayout:
    """The shape of a tokenizer's tokens: what a prior needs to know about them.

    Attributes:
        primary_vocab: K1, entries of the primary codebook.
        primary_grid: ``(h, w)`` of the primary token grid.
        secondary_vocab: K2, entries of the secondary codebook; 0 = no secondary tokens.
        secondary_grid: ``(h2, w2)`` of the secondary grid (``(1, 1)`` for MVQ / VQ-VAE-2).
        mask_bits: the bits of an MVQ mask in the tokens: D' for a mask pattern, log2 J for
            the index of a mask codebook (0: no mask).
        mask_codebook_size: J when the mask is the index of one of J fixed masks (a mask
            codebook; J a power of 2, ``mask_bits = log2 J``); 0: the mask is its D' bits.
    """

    primary_vocab: int
    primary_grid: tuple[int, int]
    secondary_vocab: int
    secondary_grid: tuple[int, int] = (1, 1)
    mask_bits: int = 0
    mask_codebook_size: int = 0

    def __post_init__(self) -> None:
        self.primary_grid = tuple(self.primary_grid)  # type: ignore[assignment]
        self.secondary_grid = tuple(self.secondary_grid)  # type: ignore[assignment]
        if self.primary_vocab < 1 or self.secondary_vocab < 0:
            raise ValueError(
                f"vocabularies must be positive (primary_vocab={self.primary_vocab}, "
                f"secondary_vocab={self.secondary_vocab}, 0 = none)"
            )
        for name, grid in (
            ("primary_grid", self.primary_grid),
            ("secondary_grid", self.secondary_grid),
        ):
            if len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"{name} must be two positive sizes (h, w), got {grid}")
        if self.mask_bits < 0:
            raise ValueError(f"mask_bits must be >= 0 (0 = no mask), got {self.mask_bits}")
        j = self.mask_codebook_size
        if j and (j < 2 or j & (j - 1) or self.mask_bits != j.bit_length() - 1):
            raise ValueError(
                f"mask_codebook_size J={j} needs J a power of 2 >= 2 and mask_bits = log2 J "
                f"(got mask_bits={self.mask_bits}); 0 means the mask is its D' bits"
            )

    @property
    def primary_len(self) -> int:
        """S, primary tokens per instance."""
        return self.primary_grid[0] * self.primary_grid[1]

    @property
    def has_secondary(self) -> bool:
        """Whether the layout has a secondary token stream."""
        return self.secondary_vocab > 0

    @property
    def secondary_len(self) -> int:
        """S', secondary tokens per instance (0 without a secondary stream)."""
        return self.secondary_grid[0] * self.secondary_grid[1] if self.has_secondary else 0

    @property
    def num_tokens(self) -> int:
        """S + S', index tokens per instance (the mask's bits are not counted)."""
        return self.primary_len + self.secondary_len

    @property
    def mask_is_index(self) -> bool:
        """Whether the mask travels as the index of a mask codebook (log2 J bits)."""
        return self.mask_codebook_size > 0


def layout_overrides(layout: TokenLayout | Mapping | object) -> dict[str, object]:
    """``primary_vocab``, ``primary_grid``, ``secondary_vocab``, ``secondary_grid``,
    ``mask_bits`` and ``mask_codebook_size`` (0 when absent, as in layouts written before mask
    codebooks) of a layout (``tokenizer.token_layout``, the ``"layout"`` dict of a token
    directory's meta or a token file's header), as overrides for ``create_prior``."""
    if isinstance(layout, Mapping):
        values = dict(layout)
    else:
        values = {n: getattr(layout, n) for n in LAYOUT_FIELDS if hasattr(layout, n)}
    missing = [n for n in LAYOUT_FIELDS[:4] if n not in values]
    if missing:
        raise TypeError(f"{type(layout).__name__} is not a token layout: it lacks {missing}")
    out = {n: tuple(v) if isinstance(v := values[n], list) else v for n in LAYOUT_FIELDS[:4]}
    return out | {n: values.get(n, 0) for n in LAYOUT_FIELDS[4:]}


def pack_masks(masks: Tensor) -> Tensor:
    """Pack boolean masks ``(..., D')`` into bytes ``(..., ceil(D'/8))`` uint8, LSB first."""
    d = masks.shape[-1]
    padded = F.pad(masks.to(torch.uint8), (0, (-d) % 8)).unflatten(-1, (-1, 8))  # (..., n, 8)
    weights = 2 ** torch.arange(8, device=masks.device, dtype=torch.uint8)
    return (padded * weights).sum(-1, dtype=torch.uint8)


def unpack_masks(packed: Tensor, dim: int) -> Tensor:
    """Inverse of ``pack_masks``: ``(..., ceil(D'/8))`` uint8 -> ``(..., D')`` bool."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != (dim + 7) // 8:
        raise ValueError(
            f"mask must be uint8 of shape (..., {(dim + 7) // 8}) for D'={dim}, got "
            f"{packed.dtype} {tuple(packed.shape)}: pass the mask returned by encode()"
        )
    bits = torch.arange(8, device=packed.device, dtype=torch.uint8)
    unpacked = (packed.unsqueeze(-1) >> bits) & 1  # (..., n, 8)
    return unpacked.flatten(-2)[..., :dim].bool()


def mask_to_tokens(packed: Tensor, mask_bits: int, token_bits: int) -> Tensor:
    """Packed masks ``(B, ceil(D'/8))`` uint8 -> ``(B, ceil(D'/b))`` int64 tokens of b bits.

    Bit ``i`` of the mask is bit ``i % b`` of token ``i // b`` (LSB first, as ``pack_masks``);
    a last partial token has its high bits 0.
    """
    bits = unpack_masks(packed, mask_bits).long()  # (B, D')
    bits = F.pad(bits, (0, (-mask_bits) % token_bits))  # (B, M*b)
    weights = 2 ** torch.arange(token_bits, device=packed.device)
    return (bits.unflatten(-1, (-1, token_bits)) * weights).sum(-1)  # (B, M)


def tokens_to_mask(tokens: Tensor, mask_bits: int, token_bits: int) -> Tensor:
    """Inverse of ``mask_to_tokens``: ``(B, M)`` tokens -> packed ``(B, ceil(D'/8))`` uint8."""
    shifts = torch.arange(token_bits, device=tokens.device)
    bits = (tokens.long().unsqueeze(-1) >> shifts) & 1  # (B, M, b)
    return pack_masks(bits.flatten(-2)[..., :mask_bits].bool())


def mask_index_to_bytes(index: Tensor, bits: int) -> Tensor:
    """Mask-codebook indices ``(B,)`` -> ``(B, ceil(bits/8))`` uint8: bit i of the index is bit
    i of the packed bytes (LSB first), so the index is one mask token of ``bits`` bits."""
    return tokens_to_mask(index[:, None], bits, bits)


def mask_bytes_to_index(packed: Tensor, bits: int) -> Tensor:
    """Inverse of ``mask_index_to_bytes``: ``(B, ceil(bits/8))`` uint8 -> indices ``(B,)``."""
    return mask_to_tokens(packed, bits, bits)[:, 0]
