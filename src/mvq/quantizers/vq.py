"""Vector quantization (VQ-VAE, paper eq. 1-2) with the options users expect.

Nearest-neighbour lookup in fp32 (also under autocast), straight-through gradients, the VQ-VAE
codebook loss ``||sg[y] - e||^2 + beta * ||y - sg[e]||^2`` (not taming's ``legacy`` form, which
puts beta on the codebook term), and optionally: EMA codebook updates, k-means or data
initialisation on the first training batch, dead-code restart from the current batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    stats_from_counts,
    to_channel_first,
    to_channel_last,
)
from mvq.tokens import Tokens

INITS = ("random", "data", "kmeans")
NN_CHUNK = 1024  # rows per block of the nearest-code search


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (no-op when not distributed)."""
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_(t: Tensor) -> Tensor:
    """Copy rank 0's ``t`` to every rank in place (no-op when not distributed)."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def nearest_code(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row for each row of ``x`` (both fp32). ``(N, D) -> (N,)``.

    ``||x||^2`` is the same for every code, so ``argmin ||e||^2 - 2 x.e`` suffices: one GEMM.
    """
    sq = (codebook * codebook).sum(1)
    if len(x) <= NN_CHUNK:
        return torch.addmm(sq, x, codebook.t(), alpha=-2.0).argmin(1)  # (N, K) -> (N,)
    # row blocks keep the (rows, K) score matrix in cache: argmin is memory-bound otherwise
    return torch.cat([
        torch.addmm(sq, rows, codebook.t(), alpha=-2.0).argmin(1) for rows in x.split(NN_CHUNK)
    ])  # fmt: skip


def kmeans_plus_plus(x: Tensor, k: int) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[torch.randint(0, x.shape[0], (1,)).item()]
    d2 = (x - centres[0]).pow(2).sum(1)
    for i in range(1, k):
        total = d2.sum()
        pick = (
            torch.multinomial(d2 / total, 1).item()
            if total > 0
            else torch.randint(0, len(x), ()).item()
        )
        centres[i] = x[pick]
        d2 = torch.minimum(d2, (x - centres[i]).pow(2).sum(1))
    return centres


def kmeans(x: Tensor, k: int, iters: int) -> Tensor:
    """Lloyd's k-means (k-means++ seeds) on rows of ``x`` ``(N, D)`` -> ``(k, D)``."""
    centres = kmeans_plus_plus(x, k)
    for _ in range(iters):
        assign = nearest_code(x, centres)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0  # empty clusters keep their centre
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class ChannelProjection(nn.Module):
    """A 1x1 linear map on channel-last tensors, or the identity when the sizes match."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out) if dim_in != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.proj is None else self.proj(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer for channel-first feature maps.

    Args:
        codebook_size: number of codes K.
        dim: code dimension D.
        in_channels: channels C of the input; when != D, linear in/out projections are added.
        beta: commitment weight (0.25 in VQ-VAE and the MVQ paper).
        ema: update the codebook by exponential moving averages instead of the codebook loss.
        decay: EMA decay, used for the EMA codebook and the code-usage statistics.
        init: ``"random"`` (uniform +-1/K), ``"data"`` (random vectors of the first training
            batch) or ``"kmeans"`` (k-means on the first training batch).
        kmeans_iters: Lloyd iterations for ``init="kmeans"``.
        dead_code_threshold: in training, a code whose EMA count per batch falls below this is
            moved onto a random vector of the current batch (0 disables restarts).

    Shapes: ``forward(z)`` takes ``(B, C, *S)`` and returns ``quantized`` of the same shape and
    ``tokens.indices`` of shape ``(B, *S)``.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        in_channels: int | None = None,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        init: str = "random",
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size} and {dim}")
        if init not in INITS:
            raise ValueError(f"unknown init '{init}'; choose one of {', '.join(INITS)}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.codebook_size, self.dim = codebook_size, dim
        self.in_channels = in_channels or dim
        self.beta, self.ema, self.decay = beta, ema, decay
        self.init, self.kmeans_iters = init, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.project_in = ChannelProjection(self.in_channels, dim)
        self.project_out = ChannelProjection(dim, self.in_channels)
        weight = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.codebook = nn.Parameter(weight, requires_grad=not ema)
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.register_buffer("code_usage", torch.ones(codebook_size))
        if ema:
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", weight.clone())

    # -- public API -------------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, C, *S)``; in training also update EMA/usage/restarts."""
        check_feature_map(z, self.in_channels)
        y = self.project_in(to_channel_last(z))  # (B, *S, D)
        flat = y.reshape(-1, self.dim)  # (N, D)
        with torch.autocast(z.device.type, enabled=False):
            flat32 = flat.float()
            if self.training and not bool(self.initialized):
                self._init_from_data(flat32.detach())
            idx = nearest_code(flat32.detach(), self.codebook.detach().float())  # (N,)
            q = F.embedding(idx, self.codebook.float())  # (N, D)
            commit = F.mse_loss(flat32, q.detach())
            loss = self.beta * commit
            if not self.ema:
                loss = loss + F.mse_loss(q, flat32.detach())
            counts = torch.bincount(idx, minlength=self.codebook_size).float()  # (K,)
            if self.training:
                self._update_statistics(flat32.detach(), idx, counts)
        q_st = q.to(flat.dtype) + (flat - flat.detach())  # straight-through; value exactly q
        quantized = to_channel_first(self.project_out(q_st.view_as(y)))
        indices = idx.view(y.shape[:-1])
        logs = stats_from_counts(counts) | {"commitment": commit.detach()}
        return QuantizerOutput(quantized, Tokens(indices), loss, logs)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tokens:
        """Indices of the nearest codes, ``(B, C, *S) -> (B, *S)``; changes no statistics."""
        check_feature_map(z, self.in_channels)
        y = self.project_in(to_channel_last(z)).float()
        idx = nearest_code(y.reshape(-1, self.dim), self.codebook.float())
        return Tokens(idx.view(y.shape[:-1]))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Codebook vectors, channel-last: ``(B, *S) -> (B, *S, D)``."""
        self.check_indices(indices)
        return F.embedding(indices, self.codebook)

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """What ``forward`` gives the decoder for these indices: ``(B, *S) -> (B, C, *S)``."""
        indices = tokens.indices if isinstance(tokens, Tokens) else tokens
        return to_channel_first(self.project_out(self.indices_to_codes(indices)))

    def check_indices(self, indices: Tensor) -> None:
        """Raise a clear error for non-integer or out-of-range indices."""
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"indices must lie in [0, {self.codebook_size}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]: they come from another codebook"
            )

    # -- training-time codebook maintenance --------------------------------------------------
    @torch.no_grad()
    def _init_from_data(self, x: Tensor) -> None:
        """Data or k-means initialisation on the first training batch (rank 0's, broadcast)."""
        if self.init == "kmeans":
            centres = kmeans(x, self.codebook_size, self.kmeans_iters)
        else:
            centres = x[torch.randint(0, x.shape[0], (self.codebook_size,)).to(x.device)]
        self.codebook.data.copy_(_broadcast_(centres.contiguous()))
        if self.ema:
            self.ema_sum.copy_(self.codebook.data)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_statistics(self, x: Tensor, idx: Tensor, counts: Tensor) -> None:
        """EMA codebook update, usage tracking and dead-code restart, in fp32."""
        counts = _all_reduce_(counts.clone())  # the logs keep this rank's own histogram
        self.code_usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = _all_reduce_(torch.zeros_like(self.ema_sum).index_add_(0, idx, x))
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n  # Laplace
            self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(x)

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor) -> None:
        dead = self.code_usage < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = x[torch.randint(0, x.shape[0], (n_dead,)).to(x.device)]
        picks = _broadcast_(picks.contiguous())
        self.codebook.data[dead] = picks
        fresh = self.code_usage.mean().clamp_min(self.dead_code_threshold)
        self.code_usage[dead] = fresh  # give restarted codes a few steps before judging them
        if self.ema:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = picks
