"""Masked Vector Quantization (MVQ) with Multiple-Hypotheses Dropout (paper §3.2-3.3).

An instance is described by a primary code ``e`` (one per primary grid position), a secondary
code ``e'`` (usually one per instance) and a binary mask ``m in {0,1}^D'`` shared by all
positions of the instance:

    y_hat = e + f(e' * m)                                             (paper eq. 5)

Training samples J masks per instance and forward pass (MH-Dropout), forms the hypotheses
``y_hat_j = e + f(e' * m_j)`` and keeps only the one nearest to the *unquantised* primary
encoder output ``y`` (winner-takes-all, eq. 6). Only the winner reaches the decoder and only the
winner gets gradient, so the search runs without autograd, in chunks, and the winner is
recomputed with autograd: the gradients are those of the all-in-graph formulation (kept here as
``search="all_in_graph"``, the reference) at a memory cost independent of J.

At generation time the mask is not modelled: ``decode`` draws it from Bernoulli(mask_prob).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.quantizers.base import (
    QuantizerOutput,
    Tokens,
    check_feature_map,
    to_channel_first,
    to_channel_last,
)
from mvq.quantizers.vq import ChannelProjection, VectorQuantizer

SEARCHES = ("chunked", "all_in_graph")


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


class MLPMHNetwork(nn.Module):
    """Default f: a per-position MLP from a masked code ``(B, D', h', w')`` to ``(B, D, gh, gw)``.

    With a 1x1 secondary grid the last layer emits ``D * gh * gw`` values that tile the primary
    grid (like a transposed conv with kernel = grid). Uses LayerNorm (per sample), never
    BatchNorm: each hypothesis must depend on its own mask only.
    """

    def __init__(
        self, in_dim: int, out_dim: int, grid: tuple[int, int] = (1, 1), hidden: int = 128
    ):
        super().__init__()
        self.out_dim, self.grid = out_dim, tuple(grid)
        self.first = nn.Linear(in_dim, hidden)  # linear in the mask
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2), nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)
        )
        self.last = nn.Linear(hidden, out_dim * self.grid[0] * self.grid[1])

    def forward(self, c: Tensor) -> Tensor:
        b, _, h, w = c.shape
        if (h, w) != (1, 1) and self.grid != (1, 1):
            raise ValueError("MLPMHNetwork with grid != (1, 1) needs a 1x1 secondary grid")
        x = self.last(self.body(self.first(to_channel_last(c))))  # (B, h, w, D*gh*gw)
        if self.grid == (1, 1):
            return to_channel_first(x)  # (B, D, h, w)
        return x.view(b, self.out_dim, *self.grid)  # (B, D, gh, gw)


def check_per_sample(f: nn.Module) -> None:
    """f must treat every hypothesis independently: no BatchNorm, no dropout."""
    for name, m in f.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd):
            raise ValueError(
                f"f contains {type(m).__name__} at '{name or 'f'}': MH-Dropout needs each "
                "hypothesis to depend on its own mask only; use GroupNorm/LayerNorm and no dropout"
            )


class MaskedVectorQuantizer(nn.Module):
    """MVQ: primary VQ + secondary VQ + masked secondary code through f, trained by MH-Dropout.

    Args:
        dim: primary code dimension D (also the primary input channels unless ``in_channels``).
        codebook_size: primary codebook entries (the paper's K counts both codebooks: K/2 each).
        secondary_dim: secondary code dimension D' (default D).
        secondary_codebook_size: secondary entries (default ``codebook_size``).
        f: network mapping ``(B, D', h', w') -> (B, D, h, w)``; default ``MLPMHNetwork``
            with ``grid`` as its output grid. Must be per-sample (no BatchNorm/dropout).
        grid: primary grid (h, w) for the default f (ignored when ``f`` is given).
        num_hypotheses: J, masks sampled per instance per forward pass.
        mask_prob: probability that a mask bit is 1 (Bernoulli(0.5) in the paper).
        per_instance_masks: draw J masks per instance (authors' code) or J shared by the batch.
        search: ``"chunked"`` (no-grad search, winner recomputed) or ``"all_in_graph"``.
        search_chunk: rows of f evaluated at once by the chunked search.
        normalize_secondary: GroupNorm(1) on e' before masking (authors' later code).
        in_channels, secondary_in_channels: input channels, projected to D / D' when different.
        vq_kwargs: options for both ``VectorQuantizer`` s (beta, ema, init, dead codes, ...).

    Shapes: ``forward(z, z2)`` with ``z`` ``(B, C, h, w)`` and ``z2`` ``(B, C', h', w')`` returns
    ``quantized`` ``(B, C, h, w)`` and tokens: ``indices`` ``(B, h, w)``, ``secondary``
    ``(B, h', w')``, ``mask`` ``(B, ceil(D'/8))`` uint8.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        secondary_dim: int | None = None,
        secondary_codebook_size: int | None = None,
        f: nn.Module | None = None,
        grid: tuple[int, int] = (1, 1),
        num_hypotheses: int = 256,
        mask_prob: float = 0.5,
        per_instance_masks: bool = True,
        search: str = "chunked",
        search_chunk: int = 4096,
        normalize_secondary: bool = False,
        in_channels: int | None = None,
        secondary_in_channels: int | None = None,
        vq_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        d2 = secondary_dim or dim
        _check_options(d2, num_hypotheses, mask_prob, search, search_chunk)
        self.dim, self.secondary_dim = dim, d2
        self.num_hypotheses, self.mask_prob = num_hypotheses, mask_prob
        self.per_instance_masks, self.search, self.search_chunk = (
            per_instance_masks,
            search,
            search_chunk,
        )
        self.in_channels, self.secondary_in_channels = (
            in_channels or dim,
            secondary_in_channels or d2,
        )
        self.project_in = ChannelProjection(self.in_channels, dim)
        self.project_in_secondary = ChannelProjection(self.secondary_in_channels, d2)
        self.project_out = ChannelProjection(dim, self.in_channels)
        kw = vq_kwargs or {}
        self.primary = VectorQuantizer(codebook_size, dim, **kw)
        self.secondary = VectorQuantizer(secondary_codebook_size or codebook_size, d2, **kw)
        self.f = f if f is not None else MLPMHNetwork(d2, dim, grid)
        check_per_sample(self.f)
        self.norm = nn.GroupNorm(1, d2) if normalize_secondary else nn.Identity()

    # -- public API -------------------------------------------------------------------------
    def forward(self, z: Tensor, z_secondary: Tensor) -> QuantizerOutput:
        """Quantise both inputs, search J masks per instance, return the winning hypothesis."""
        check_feature_map(z, self.in_channels, "primary input")
        check_feature_map(z_secondary, self.secondary_in_channels, "secondary input")
        if z.shape[0] != z_secondary.shape[0]:
            raise ValueError(
                f"batch sizes differ: primary {z.shape[0]}, secondary {z_secondary.shape[0]}"
            )
        y = to_channel_first(self.project_in(to_channel_last(z)))  # (B, D, h, w)
        y2 = to_channel_first(self.project_in_secondary(to_channel_last(z_secondary)))
        p, s = self.primary(y), self.secondary(y2)
        code = self.norm(s.quantized)  # (B, D', h', w'), straight-through to the secondary encoder
        masks = self.sample_masks(z.shape[0], self.num_hypotheses, z.device)  # (B, J, D')
        rows = torch.arange(z.shape[0], device=z.device)
        if self.search == "all_in_graph":
            y_hat, mhd, winner, stats = wta_all_in_graph(self.f, p.quantized, code, y, masks)
            chosen = masks[rows, winner]  # (B, D')
        else:
            winner, stats = self.search_winner(p.quantized.detach(), code.detach(), y, masks)
            chosen = masks[rows, winner]  # (B, D')
            y_hat = p.quantized + self._f(code * _bcast(chosen), y)  # the winner, with autograd
            mhd = F.mse_loss(y_hat, y)
        quantized = to_channel_first(self.project_out(to_channel_last(y_hat)))
        tokens = Tokens(p.indices, s.indices, pack_masks(chosen))
        logs = {
            **{f"primary_{k}": v for k, v in p.logs.items()},
            **{f"secondary_{k}": v for k, v in s.logs.items()},
            "usage": p.logs["usage"],
            "mhd": mhd.detach(),
            "mhd_mean_hypothesis": stats,
            "mask_density": chosen.float().mean(),
            "y_rms": y.detach().pow(2).mean().sqrt(),
        }
        return QuantizerOutput(quantized, tokens, p.loss + s.loss + mhd, logs)

    @torch.no_grad()
    def encode(self, z: Tensor, z_secondary: Tensor) -> Tokens:
        """Tokens (indices, secondary indices, best-of-J mask); uses the global RNG for masks."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, z_secondary).tokens
        finally:
            self.train(was_training)

    def decode(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        """``e + f(e' * m)`` from tokens; a missing mask is drawn from Bernoulli(mask_prob).

        ``generator`` (on the decode device) makes the drawn masks reproducible.
        """
        if tokens.secondary is None:
            raise ValueError("MVQ tokens need secondary indices (tokens.secondary is None)")
        e = to_channel_first(self.primary.indices_to_codes(tokens.indices))  # (B, D, h, w)
        code = self.norm(to_channel_first(self.secondary.indices_to_codes(tokens.secondary)))
        if tokens.mask is None:  # generation: the mask is not modelled, draw one
            rand = torch.rand(
                code.shape[0], self.secondary_dim, generator=generator, device=code.device
            )
            mask = rand < self.mask_prob
        else:
            mask = unpack_masks(tokens.mask.to(code.device), self.secondary_dim)
        y_hat = e + self._f(code * _bcast(mask), e)
        return to_channel_first(self.project_out(to_channel_last(y_hat)))

    def sample_masks(self, batch: int, num: int, device: torch.device) -> Tensor:
        """Bernoulli(mask_prob) masks ``(B, J, D')`` bool (shared: one draw expanded over B)."""
        rows = batch if self.per_instance_masks else 1
        masks = torch.rand(rows, num, self.secondary_dim, device=device) < self.mask_prob
        return masks.expand(batch, -1, -1)

    @property
    def mask_bytes(self) -> int:
        """Bytes per instance of a packed mask."""
        return (self.secondary_dim + 7) // 8

    # -- MH-Dropout search ------------------------------------------------------------------
    @torch.no_grad()
    def search_winner(
        self, e: Tensor, code: Tensor, y: Tensor, masks: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Index of the best of J masks per instance, without autograd, ``chunk`` rows at a time.

        Args: e ``(B, D, h, w)``, code ``(B, D', h', w')``, y ``(B, D, h, w)``, masks
        ``(B, J, D')``. Returns winners ``(B,)`` and the mean hypothesis error (a log).
        """
        b, j = masks.shape[:2]
        if not self.per_instance_masks:
            return self._search_shared(e, code, y, masks)
        step = max(1, self.search_chunk // b)
        best = torch.full((b,), float("inf"), device=y.device)
        winner = torch.zeros(b, dtype=torch.long, device=y.device)
        total = torch.zeros((), device=y.device)
        for j0 in range(0, j, step):
            m = masks[:, j0 : j0 + step]  # (B, Jc, D')
            err = self._hypothesis_errors(e, code, y, m)  # (B, Jc)
            total += err.sum()
            val, arg = err.min(1)
            better = val < best
            best = torch.where(better, val, best)
            winner = torch.where(better, arg + j0, winner)
        return winner, total / (b * j)

    def _hypothesis_errors(self, e: Tensor, code: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """MSE of ``e + f(code * m_j)`` against ``y`` for each mask. ``-> (B, Jc)``."""
        b, jc = m.shape[:2]
        c = code.unsqueeze(1) * _bcast(m)  # (B, Jc, D', h', w')
        out = self._f(c.flatten(0, 1), y).unflatten(0, (b, jc))  # (B, Jc, D, h, w)
        err = (e.unsqueeze(1) + out - y.unsqueeze(1)).float().pow(2)
        return err.flatten(2).mean(-1)

    def _search_shared(
        self, e: Tensor, code: Tensor, y: Tensor, masks: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Shared masks: evaluate f once per distinct secondary code, not once per instance."""
        flat = code.flatten(1)
        uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)  # (U, D'*h'*w'), (B,)
        u = uniq.view(-1, *code.shape[1:])
        j = masks.shape[1]
        step = max(1, self.search_chunk // len(u))
        errs = []
        for j0 in range(0, j, step):
            m = masks[: len(u), j0 : j0 + step]  # shared masks: every row is the same
            c = u.unsqueeze(1) * _bcast(m)  # (U, Jc, D', h', w')
            out = self._f(c.flatten(0, 1), y).unflatten(0, (len(u), -1))  # (U, Jc, D, h, w)
            err = (e.unsqueeze(1) + out[inverse] - y.unsqueeze(1)).float().pow(2)
            errs.append(err.flatten(2).mean(-1))  # (B, Jc)
        err = torch.cat(errs, 1)
        return err.argmin(1), err.mean()

    def _f(self, c: Tensor, like: Tensor) -> Tensor:
        """Apply f and broadcast a 1x1 output over the primary grid of ``like``."""
        out = self.f(c)
        if out.shape[-2:] != like.shape[-2:]:
            if out.shape[-2:] != (1, 1):
                raise ValueError(
                    f"f maps to a {tuple(out.shape[-2:])} grid but the primary grid is "
                    f"{tuple(like.shape[-2:])}: build f for this grid"
                )
            out = out.expand(*out.shape[:-2], *like.shape[-2:])
        return out


def wta_all_in_graph(
    f: nn.Module, e: Tensor, code: Tensor, y: Tensor, masks: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference MH-Dropout: all J hypotheses in the autograd graph, loss gated by one-hot w_j.

    This is the paper's eq. 6 as the authors implement it (memory grows with J). Returns the
    winning hypotheses ``(B, D, h, w)``, the WTA loss, winners ``(B,)`` and the mean error.
    """
    b, j = masks.shape[:2]
    c = code.unsqueeze(1) * _bcast(masks)  # (B, J, D', h', w')
    out = f(c.flatten(0, 1))
    out = out.expand(*out.shape[:-2], *y.shape[-2:]).unflatten(0, (b, j))  # (B, J, D, h, w)
    hyps = e.unsqueeze(1) + out
    err = (hyps - y.unsqueeze(1)).pow(2).flatten(2).mean(-1)  # (B, J)
    winner = err.detach().argmin(1)
    w = F.one_hot(winner, j).to(err.dtype)  # Kronecker delta, eq. 6
    loss = (w * err).sum(1).mean()
    return hyps[torch.arange(b, device=y.device), winner], loss, winner, err.detach().mean()


def _bcast(m: Tensor) -> Tensor:
    """Masks ``(..., D')`` -> ``(..., D', 1, 1)`` float, to multiply a code map."""
    return m[..., None, None].float()


def _check_options(d2: int, j: int, p: float, search: str, chunk: int) -> None:
    if not isinstance(j, int) or j <= 0:
        raise ValueError(f"num_hypotheses (J) must be a positive integer, got {j!r}")
    if d2 < 63 and j > 2**d2:
        raise ValueError(
            f"num_hypotheses J={j} exceeds the 2^D'={2**d2} possible masks of a {d2}-dim secondary"
            " code: lower J or raise secondary_dim"
        )
    if not 0.0 < p < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {p}")
    if search not in SEARCHES:
        raise ValueError(f"unknown search '{search}'; choose one of {', '.join(SEARCHES)}")
    if chunk < 1:
        raise ValueError(f"search_chunk must be >= 1, got {chunk}")
