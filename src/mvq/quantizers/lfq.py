"""Lookup-free quantization (LFQ; Yu et al., ICLR 2024, MAGVIT-v2 §3.1): a sign bit per channel.

Each of the ``d`` channels is quantised to its sign, so the codebook is the implicit set
``{−s, s}^d`` of ``2^d`` codes (``s = scale``, 1 in the paper) and there is nothing to look up:
no codebook parameters, hence no EMA, k-means initialisation or dead-code restarts. Usage is
kept up by the entropy penalty instead, which needs the soft assignment ``q(c | z)`` of ``z`` to
every code; this module computes it exactly without ever forming the ``(N, 2^d)`` matrix:

- **per-sample entropy.** ``q(c | z) ∝ exp(−‖z − c‖²/τ) = Π_i q_i(c_i | z_i)`` factorises over
  channels (``‖c‖²`` is the same for every code), so ``H(q(·|z)) = Σ_i h(σ(4 s z_i / τ))`` with
  ``h`` the binary entropy: ``O(d)`` per token, exact.
- **codebook entropy** ``H(E_z[q(·|z)])``. The mean over tokens does not factorise, but splitting
  the channels into a low half ``a`` and a high half ``b`` does: with ``A = q(c_a | z)``
  ``(N, 2^|a|)`` and ``B = q(c_b | z)`` ``(N, 2^|b|)`` (each a softmax over its own half-codebook)
  the batch distribution over all ``2^d`` codes is the GEMM ``P = Aᵀ B / N``
  ``(2^|a|, 2^|b|)``, code ``j + 2^|a| k`` at ``P[j, k]``. ``P`` is formed whole while both
  halves have at most ``TILE_BITS`` = 10 bits (``d ≤ 20``, which covers the ``d ≤ 16`` that
  other implementations form as an ``(N, 2^d)`` softmax); above that, ``−Σ P log P`` is summed
  over tiles of ``2^10 × 2^10`` codes, each recomputed in the backward pass (activation
  checkpointing), so memory stays ``O(N (2^|a| + 2^|b|))`` floats plus one tile, to ``d = 30``.
  The cost is ``N · 2^d`` multiply-adds, whatever the tiling: at ``d = 30`` a GPU's work.
  ``entropy_group_size = g`` instead sums the exact entropies of groups of ``g`` consecutive
  channels (the factorised approximation of BSQ, Zhao et al. 2024; an upper bound of the
  exact codebook entropy, equal when the groups are independent under ``E_z q``).
  Under DDP it is each rank's own batch distribution (vector-quantize-pytorch all-reduces it).

Bit order: channel ``i`` is bit ``i`` of the index, least significant first,
``index = Σ_i 2^i [z_i > 0]`` (the paper's ``Σ_i 2^(i−1) 1[z_i > 0]`` with 1-based ``i``).
vector-quantize-pytorch uses the reverse (channel 0 is its most significant bit).
``z_i = 0`` gives bit 0 (code ``−s``), as in vector-quantize-pytorch.

Logs: ``usage`` and ``perplexity`` of the hard indices over all ``2^d`` codes (a bincount for
``d ≤ 16``; above, from the distinct indices alone, the same numbers without a ``2^d``
histogram); ``commitment``; in training also ``per_sample_entropy`` and ``codebook_entropy``
(nats). Quantisation and the losses run in fp32 with autocast off, whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mvq.core.tokens import Tokens
from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    codebook_stats,
    to_channel_first,
    to_channel_last,
)

MAX_DIM = 30  # 2^30 codes: the largest codebook whose exact entropy is still computable
TILE_BITS = 10  # the codebook distribution P is formed in tiles of 2^10 x 2^10 codes
BINCOUNT_MAX_DIM = 16  # usage/perplexity by a 2^d bincount up to here, by unique() above
TINY = torch.finfo(torch.float32).tiny  # log(P) of an underflowed P: finite value and gradient


def bits_to_indices(bits: Tensor) -> Tensor:
    """Bits ``(..., d)`` (bool or 0/1) -> indices ``(...)`` int64, channel ``i`` = bit ``i``."""
    powers = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.int64)  # (d,)
    return (bits.to(torch.int64) * powers).sum(-1)


def indices_to_bits(indices: Tensor, dim: int) -> Tensor:
    """Indices ``(...)`` -> bits ``(..., dim)`` bool, the inverse of ``bits_to_indices``."""
    shifts = torch.arange(dim, device=indices.device, dtype=torch.int64)  # (d,)
    return (indices.long().unsqueeze(-1) >> shifts) & 1 == 1


def _tile_entropy(a: Tensor, b: Tensor) -> Tensor:
    """``−Σ P log P`` of the tile ``P = a bᵀ``: ``a`` ``(r, N)``, ``b`` ``(c, N)``."""
    p = a @ b.t()  # (r, c)
    return -(p * p.clamp_min(TINY).log()).sum()


def _half_probs(pos: Tensor, neg: Tensor, start: Tensor) -> Tensor:
    """``q`` over the ``2^k`` sign patterns of ``k`` channels, ``(2^k, N)``, from the channels'
    ``σ(±logits)`` ``(k, N)``: ``q(c) = start·Π_i σ(c_i·logits_i)``, built one channel at a
    time, appending channel ``i`` at bit ``2^i`` (the index order of ``bits_to_indices``).

    Rows of ``N`` keep every step one long vectorised pass; a softmax over the ``2^k`` products
    gives the same numbers but is several times slower on the CPU for short rows.
    """
    probs = start  # (1, N)
    for p, q in zip(pos, neg, strict=True):  # (N,) each
        probs = torch.cat([probs * q, probs * p])  # (2·w, N): bit i = 0 first, then 1
    return probs


def _group_entropy(pos: Tensor, neg: Tensor, tile_bits: int) -> Tensor:
    """Exact ``H(E_z q(·|z))`` over the ``2^g`` codes of a group from ``σ(±logits)`` ``(g, N)``."""
    g, n = pos.shape
    lo = (g + 1) // 2  # the low half: bits 0 .. lo-1 of the code index
    ones = pos.new_ones(1, n)
    a = _half_probs(pos[:lo], neg[:lo], ones / n)  # (2^lo, N), the 1/N of the mean folded in
    b = _half_probs(pos[lo:], neg[lo:], ones)  # (2^(g-lo), N); P = a bᵀ sums to 1
    tile = 2**tile_bits
    if a.shape[0] <= tile and b.shape[0] <= tile:
        return _tile_entropy(a, b)
    grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    total = pos.new_zeros(())
    for a_rows in a.split(tile):
        for b_rows in b.split(tile):
            if grad:  # keep no tile for backward: recompute it there
                total = total + checkpoint(_tile_entropy, a_rows, b_rows, use_reentrant=False)
            else:
                total = total + _tile_entropy(a_rows, b_rows)
    return total


def lfq_entropies(
    x: Tensor, logit_scale: float, group_size: int | None = None, tile_bits: int = TILE_BITS
) -> tuple[Tensor, Tensor]:
    """(per-sample entropy ``E_z H(q(·|z))``, codebook entropy ``H(E_z q(·|z))``) in nats of
    rows ``x`` ``(N, d)``, with ``q(c|z) = softmax_c(logit_scale·zᵀc)`` over ``c ∈ {−1, 1}^d``.

    ``q`` factorises: ``q(c_i = +1 | z) = σ(2·logit_scale·z_i)``; the per-sample entropy is the
    sum of the channels' binary entropies ``softplus(a) − a·σ(a)``, exact.

    Args:
        x: fp32 rows ``(N, d)``.
        logit_scale: ``2 s / τ`` for codes ``s·{−1, 1}^d`` and temperature ``τ``.
        group_size: ``None`` for the exact codebook entropy over all ``2^d`` codes; ``g`` for the
            sum of the exact entropies of consecutive groups of ``g`` channels (an upper bound).
        tile_bits: above ``2^tile_bits`` codes per half, the distribution is summed in tiles.
    """
    n, d = x.shape
    g = d if group_size is None else group_size
    logits = (x.t() * (2 * logit_scale)).contiguous()  # (d, N)
    pos, neg = torch.sigmoid(logits), torch.sigmoid(-logits)  # q(c_i = ±1 | z), (d, N) each
    sample = (F.softplus(logits) - logits * pos).sum() / n
    book = sum(_group_entropy(pos[i : i + g], neg[i : i + g], tile_bits) for i in range(0, d, g))
    return sample, book


def code_stats(indices: Tensor, dim: int) -> dict[str, Tensor]:
    """Usage and perplexity of ``indices`` over ``2^dim`` codes (unique() above 2^16 codes)."""
    if dim <= BINCOUNT_MAX_DIM:
        return codebook_stats(indices, 2**dim)
    counts = torch.unique(indices, return_counts=True)[1].float()
    probs = counts / counts.sum()
    return {
        "usage": counts.new_tensor(len(counts) / 2**dim),
        "perplexity": torch.exp(-(probs * probs.log()).sum()),
    }


class LFQ(nn.Module):
    """Lookup-free quantization with an optional 1×1 projection to and from ``d`` channels.

    With ``z`` the (projected) input at one position, ``s`` = ``scale``, ``τ`` = ``temperature``:

    - code ``ĉ = s·sign(z)`` (``z_i = 0`` → ``−s``), index ``Σ_i 2^i [z_i > 0]`` (paper §3.1);
      the decoder gets ``ĉ`` with the straight-through gradient of ``z``;
    - soft assignment ``q(c | z) = softmax_c(−‖z − c‖²/τ) = softmax_c(2 zᵀc/τ)``, ``c ∈ {−s, s}^d``;
    - ``loss = entropy_weight·(E_z[H(q(·|z))] − diversity_gamma·H(E_z[q(·|z)]))
      + commitment_weight·‖z − sg(ĉ)‖²/d`` (the paper's entropy penalty
      ``E[H(q(z))] − H[E(q(z))]`` with vector-quantize-pytorch's weights; the squared error is a
      mean over channels and positions). The entropy terms are a training regulariser,
      computed in training mode only (see the module docstring for how); in eval mode ``loss``
      is the commitment term alone.

    There is no codebook to learn, so EMA updates, k-means initialisation and dead-code
    restarts do not apply; the entropy penalty's codebook term is what keeps codes in use.

    Args:
        dim: ``d``, bits per token; the implicit codebook has ``2^d`` codes, ``1 ≤ d ≤ 30``.
        in_channels: channels of the feature map; when it differs from ``d``, linear projections
            ``C -> d`` before and ``d -> C`` after the quantiser are added. Defaults to ``d``.
        entropy_weight: weight of the entropy penalty, 0.1 (Open-MAGVIT2's
            ``codebook_weight``, vector-quantize-pytorch's ``entropy_loss_weight``); 0 skips it.
        commitment_weight: weight of the commitment loss, 0.25 (Open-MAGVIT2's
            ``commit_weight``; vector-quantize-pytorch defaults to 0).
        diversity_gamma: weight of the codebook entropy inside the penalty, 1.0 (both).
        temperature: ``τ`` of the soft assignment, 0.01 (vector-quantize-pytorch's
            ``inv_temperature = 100``).
        scale: ``s``, the magnitude of every code coordinate (vector-quantize-pytorch's
            ``codebook_scale``), 1.0.
        entropy_group_size: ``None`` (default) for the exact codebook entropy over all ``2^d``
            codes; ``g`` for the sum over groups of ``g`` channels (BSQ's approximation).
    """

    def __init__(
        self,
        dim: int,
        in_channels: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        temperature: float = 0.01,
        scale: float = 1.0,
        entropy_group_size: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ValueError(
                f"{name} dim must be an int in [1, {MAX_DIM}] (2^dim codes), got {dim!r}"
            )
        g = dim if entropy_group_size is None else entropy_group_size
        if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= dim:
            raise ValueError(
                f"{name} entropy_group_size must be an int in [1, dim={dim}] or None, got {g!r}"
            )
        if not (
            math.isfinite(temperature) and temperature > 0 and math.isfinite(scale) and scale > 0
        ):
            raise ValueError(
                f"{name} temperature and scale must be finite and > 0, got {temperature}, {scale}"
            )
        self.dim = dim
        self.in_channels = dim if in_channels is None else int(in_channels)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.codebook_size = 2**dim
        self.entropy_weight, self.commitment_weight = entropy_weight, commitment_weight
        self.diversity_gamma, self.temperature = diversity_gamma, temperature
        self.scale, self.entropy_group_size = scale, entropy_group_size
        self.has_projections = self.in_channels != dim
        self.project_in = nn.Linear(self.in_channels, dim) if self.has_projections else None
        self.project_out = nn.Linear(dim, self.in_channels) if self.has_projections else None

    @property
    def bits_per_token(self) -> int:
        """``d``: every token is ``d`` bits."""
        return self.dim

    def _prepare(self, x: Tensor) -> Tensor:
        """The quantiser's input from the projected fp32 ``x`` ``(..., d)`` (identity for LFQ)."""
        return x

    def _codes(self, bits: Tensor) -> Tensor:
        """Bits ``(..., d)`` bool -> codes ``(..., d)`` float32 in ``{−s, s}``."""
        return bits.float().mul_(2 * self.scale).sub_(self.scale)  # exact: 2s - s = s

    def _losses(self, u: Tensor, codes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Commitment and (in training) entropy terms of ``u`` ``(..., d)`` fp32: (loss, logs)."""
        commitment = F.mse_loss(u, codes)
        loss = self.commitment_weight * commitment
        logs = {"commitment": commitment.detach()}
        if self.training and self.entropy_weight != 0:
            flat = u.reshape(-1, self.dim)  # (N, d)
            logit_scale = 2 * self.scale / self.temperature
            sample, book = lfq_entropies(flat, logit_scale, self.entropy_group_size)
            loss = loss + self.entropy_weight * (sample - self.diversity_gamma * book)
            logs |= {"per_sample_entropy": sample.detach(), "codebook_entropy": book.detach()}
        return loss, logs

    def _channel_last_input(self, z: Tensor) -> Tensor:
        """Check ``z`` ``(B, C, *S)`` and return the quantiser's input ``(B, *S, d)`` fp32."""
        check_feature_map(z, self.in_channels)
        h = to_channel_last(z)  # (B, *S, C)
        h = h if self.project_in is None else self.project_in(h)  # (B, *S, d)
        with torch.autocast(z.device.type, enabled=False):
            return self._prepare(h.float())

    def _project_out(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *S, d)`` -> decoder input ``(B, C, *S)``."""
        if self.project_out is not None:
            codes = self.project_out(codes.to(self.project_out.weight.dtype))  # (B, *S, C)
        return to_channel_first(codes)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise channel-first ``(B, C, *S)``; ``quantized`` is float32 unless projected."""
        u = self._channel_last_input(z)  # (B, *S, d) fp32
        with torch.autocast(z.device.type, enabled=False):
            bits = u.detach() > 0  # (B, *S, d)
            codes = self._codes(bits)
            quantized = codes + (u - u.detach())  # value exactly the codes, gradient of u
            loss, logs = self._losses(u, codes)
        with torch.no_grad():
            indices = bits_to_indices(bits)  # (B, *S)
            logs |= code_stats(indices, self.dim)
        return QuantizerOutput(self._project_out(quantized), Tokens(indices), loss, logs)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tokens:
        """Channel-first ``(B, C, *S)`` -> ``Tokens(indices=(B, *S) int64)``."""
        return Tokens(bits_to_indices(self._channel_last_input(z) > 0))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices ``(...)`` -> codes ``(..., d)`` float32, channel-last."""
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(
                f"{type(self).__name__} indices must be an integer tensor, got {indices.dtype}"
            )
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"{type(self).__name__} indices must lie in [0, 2^{self.dim}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]: check the token source"
            )
        return self._codes(indices_to_bits(indices, self.dim))

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes ``(..., d)`` -> indices ``(...)`` int64: the sign of each channel is its bit."""
        if codes.dim() < 1 or codes.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} codes must be channel-last (..., {self.dim}), got shape "
                f"{tuple(codes.shape)}: move the channels last (x.movedim(1, -1))"
            )
        return bits_to_indices(codes.detach() > 0)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """``Tokens`` or indices ``(B, *S)`` -> exactly forward's ``quantized`` ``(B, C, *S)``."""
        indices = tokens.indices if isinstance(tokens, Tokens) else tokens
        if not isinstance(indices, Tensor) or indices.dim() < 2:
            raise ValueError(
                f"{type(self).__name__}.decode takes Tokens or indices of shape (B, *spatial), got "
                f"{tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__}"
            )
        return self._project_out(self.indices_to_codes(indices))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, in_channels={self.in_channels}, temperature={self.temperature}, "
            f"entropy_weight={self.entropy_weight}, commitment_weight={self.commitment_weight}"
        )
