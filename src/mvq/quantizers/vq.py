"""Vector quantization (VQ-VAE, paper eq. 1-2) with the options users expect.

Nearest-neighbour lookup in fp32 (also under autocast), straight-through gradients, the VQ-VAE
codebook loss ``||sg[y] - e||^2 + beta * ||y - sg[e]||^2`` (not taming's ``legacy`` form, which
puts beta on the codebook term), and optionally: EMA codebook updates, k-means or data
initialisation on the first training batch, dead-code restart from the current batch; cosine
(l2-normalised) codes, a low-dimensional lookup (factorized codes), the rotation trick and SimVQ's
frozen codebook times a learned map (see ``VectorQuantizer``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from mvq.core.tokens import Tokens
from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    stats_from_counts,
    to_channel_first,
    to_channel_last,
)

INITS = ("random", "data", "kmeans")
NN_CHUNK = 1024  # rows per block of the nearest-code search
NORM_EPS = 1e-6  # floor of the norms divided by (l2-normalisation, the rotation trick)


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


def l2norm(x: Tensor) -> Tensor:
    """Rows of ``x`` scaled to unit length (norms floored at ``NORM_EPS``)."""
    return F.normalize(x, dim=-1, eps=NORM_EPS)


def nearest_code(x: Tensor, codebook: Tensor, cosine: bool = False) -> Tensor:
    """Index of the nearest codebook row for each row of ``x`` (both fp32). ``(N, D) -> (N,)``.

    ``||x||^2`` is the same for every code, so ``argmin ||e||^2 - 2 x.e`` suffices: one GEMM.
    With ``cosine`` (unit rows on both sides) ``||e||^2 = 1`` and it is ``argmax x.e``.
    """
    sq = None if cosine else (codebook * codebook).sum(1)

    def search(rows: Tensor) -> Tensor:  # (n, D) -> (n,)
        if sq is None:
            return torch.mm(rows, codebook.t()).argmax(1)
        return torch.addmm(sq, rows, codebook.t(), alpha=-2.0).argmin(1)

    if len(x) <= NN_CHUNK:
        return search(x)
    # row blocks keep the (rows, K) score matrix in cache: argmin is memory-bound otherwise
    return torch.cat([search(rows) for rows in x.split(NN_CHUNK)])


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


def kmeans(x: Tensor, k: int, iters: int, cosine: bool = False) -> Tensor:
    """Lloyd's k-means (k-means++ seeds) on rows of ``x`` ``(N, D)`` -> ``(k, D)``.

    With ``cosine`` (rows of ``x`` on the unit sphere) it is spherical k-means: the centres are
    re-normalised after every update and points go to the centre of largest dot product.
    """
    centres = kmeans_plus_plus(x, k)
    for _ in range(iters):
        assign = nearest_code(x, centres, cosine)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0  # empty clusters keep their centre
        centres[filled] = sums[filled] / counts[filled, None]
        if cosine:
            centres = l2norm(centres)
    return centres


class _RotateTo(torch.autograd.Function):
    """The rotation trick (Fifty et al. 2024, §4.2) as one autograd node: ``(y, q) -> q``.

    The value is ``q`` exactly (``sg[λR] y = q`` up to rounding, so the forward skips it); the
    gradient to ``y`` is ``λ Rᵀ g`` with ``λ = ||q||/||y||``, ``R = I - 2wwᵀ + 2 q̂ ŷᵀ``,
    ``w = (ŷ + q̂)/||ŷ + q̂||``, all treated as constants; ``q`` gets no gradient from here.
    Rows are ``(N, d)`` fp32.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, y: Tensor, q: Tensor) -> Tensor:
        ctx.save_for_backward(y, q)
        return q.clone()

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        y, q = ctx.saved_tensors
        y_norm = y.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)  # (N, 1)
        q_norm = q.norm(dim=-1, keepdim=True)
        u, q_hat = y / y_norm, q / q_norm.clamp_min(NORM_EPS)  # (N, d) unit rows
        w = l2norm(u + q_hat)
        g_w = (grad * w).sum(-1, keepdim=True)  # (N, 1)
        g_q = (grad * q_hat).sum(-1, keepdim=True)
        # Rᵀ g = g - 2 w (w·g) + 2 ŷ (q̂·g), scaled by λ
        return (grad - 2 * g_w * w + 2 * g_q * u) * (q_norm / y_norm), None


class ChannelProjection(nn.Module):
    """A 1x1 linear map on channel-last tensors, or the identity when the sizes match."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out) if dim_in != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.proj is None else self.proj(x)


def check_vq_options(
    ema: bool, init: str, dead_code_threshold: float, codebook_dim: int | None, simvq: bool
) -> None:
    """Raise one clear ``ValueError`` for an option combination ``VectorQuantizer`` refuses."""
    if codebook_dim is not None and (
        isinstance(codebook_dim, bool) or not isinstance(codebook_dim, int) or codebook_dim < 1
    ):
        raise ValueError(f"codebook_dim must be an int >= 1 or None, got {codebook_dim!r}")
    if not simvq:
        return
    if ema:
        raise ValueError(
            "simvq=True cannot use ema=True: its codes C·W move only through the learned map W "
            "(by gradient); use ema=False"
        )
    if init != "random":
        raise ValueError(
            f"simvq=True cannot use init='{init}': its frozen codebook C is random by "
            "definition and W starts as a random map; use init='random'"
        )
    if dead_code_threshold > 0:
        raise ValueError(
            "simvq=True cannot restart dead codes (dead_code_threshold > 0): its codes move "
            "together through W, not one by one; use dead_code_threshold=0"
        )


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer for channel-first feature maps.

    With all options off (the defaults): ``k = argmin_j ||y - e_j||``, ``q = e_k`` and the loss
    ``||sg[y] - q||^2 + beta·||y - sg[q]||^2`` (VQ-VAE, van den Oord et al. 2017, eq. 3); the
    decoder gets ``q + (y - sg[y])``: value ``q``, the decoder's gradient to both ``y`` and ``q``.
    The options change the space of the lookup (``h`` below; ``h = y`` by default), the codes
    ``e_j`` or the gradient, and combine freely except where a ValueError says otherwise.

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
        cosine: l2-normalised inputs and codes (Yu et al. 2022, ViT-VQGAN §3.2):
            ``h = y/||y||``, ``ê_j = e_j/||e_j||``, ``k = argmax_j h·ê_j`` (the nearest code on
            the unit sphere) and both loss terms on the sphere. EMA averages the unit inputs
            (``ê = normalise(ema_sum / ema_count)``), k-means is spherical, data init and
            restarts copy unit inputs.
        codebook_dim: look codes up in ``d = codebook_dim`` dimensions (Yu et al. 2022,
            factorized codes): ``h = W_in y + b_in`` (D -> d), ``k = argmin_j ||h - e_j||``,
            the decoder gets ``W_out q + b_out`` (d -> D); both maps are learned, in fp32, and
            usually combined with ``cosine``. EMA, initialisation and restarts act on ``h``.
            ``indices_to_codes`` returns the D-dimensional codes ``W_out e_k + b_out``. With
            ``in_channels != dim`` the maps C -> D -> d compose; ``dim = in_channels`` saves one.
        rotation_trick: replace the straight-through gradient by the rotation trick (Fifty et
            al. 2024, §4): ``q̃ = sg[λR] h`` with ``λ = ||q||/||h||``,
            ``R = I - 2wwᵀ + 2 q̂ ĥᵀ``, ``w = (ĥ + q̂)/||ĥ + q̂||``, which rotates and rescales
            ``h`` onto ``q`` (value ``q``); ``∂L/∂h = λ Rᵀ ∂L/∂q̃``. The codes learn only from
            their own loss term (or EMA).
        simvq: SimVQ (Zhu et al. 2024): the codes are ``C W`` with ``C`` (K, d) a frozen
            Gaussian codebook (std ``d^-1/2``, stored as the ``codebook`` buffer) and ``W``
            (d, d) a learned linear map (``codebook_transform``); the codebook term
            ``||sg[h] - (CW)_k||^2`` (and the decoder's gradient through ``q``, as for any
            learned codebook here) trains W, so all codes move together. Refuses ``ema``,
            ``init`` other than ``"random"`` and dead-code restarts (one-line ValueErrors).

    Shapes: ``forward(z)`` takes ``(B, C, *S)`` and returns ``quantized`` of the same shape and
    ``tokens.indices`` of shape ``(B, *S)``. ``self.codebook`` is the stored table (K, d): the
    learned codes (unnormalised under ``cosine``) or SimVQ's frozen ``C``; the codes themselves
    come from ``indices_to_codes``.
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
        cosine: bool = False,
        codebook_dim: int | None = None,
        rotation_trick: bool = False,
        simvq: bool = False,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size} and {dim}")
        if init not in INITS:
            raise ValueError(f"unknown init '{init}'; choose one of {', '.join(INITS)}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        check_vq_options(ema, init, dead_code_threshold, codebook_dim, simvq)
        self.codebook_size, self.dim = codebook_size, dim
        self.in_channels = in_channels or dim
        self.beta, self.ema, self.decay = beta, ema, decay
        self.init, self.kmeans_iters = init, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.cosine, self.rotation_trick, self.simvq = cosine, rotation_trick, simvq
        self.codebook_dim = codebook_dim or dim  # d, the dimension of the lookup
        self.project_in = ChannelProjection(self.in_channels, dim)
        self.project_out = ChannelProjection(dim, self.in_channels)
        d = self.codebook_dim
        if simvq:  # frozen C ~ N(0, 1/d); the codes are C W
            self.register_buffer("codebook", torch.randn(codebook_size, d) * d**-0.5)
            self.codebook_transform = nn.Linear(d, d, bias=False)
        else:
            bound = 1.0 / codebook_size
            weight = torch.empty(codebook_size, d).uniform_(-bound, bound)
            self.codebook = nn.Parameter(weight, requires_grad=not ema)
        self.factor_in = ChannelProjection(dim, d)
        self.factor_out = ChannelProjection(d, dim)
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.register_buffer("code_usage", torch.ones(codebook_size))
        if ema:
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", self.codebook.detach().clone())

    @property
    def bits_per_token(self) -> float:
        """Bits per position: log2 K."""
        return math.log2(self.codebook_size)

    # -- public API -------------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, C, *S)``; in training also update EMA/usage/restarts."""
        check_feature_map(z, self.in_channels)
        y = self.project_in(to_channel_last(z))  # (B, *S, D)
        flat = y.reshape(-1, self.dim)  # (N, D)
        with torch.autocast(z.device.type, enabled=False):
            h = self._to_lookup(flat.float())  # (N, d)
            if self.training and not bool(self.initialized):
                self._init_from_data(h.detach())
            codes = self._codes()  # (K, d)
            idx = nearest_code(h.detach(), codes.detach(), self.cosine)  # (N,)
            q = F.embedding(idx, codes)  # (N, d)
            commit = F.mse_loss(h, q.detach())
            loss = self.beta * commit
            if not self.ema:
                loss = loss + F.mse_loss(q, h.detach())
            counts = torch.bincount(idx, minlength=self.codebook_size).float()  # (K,)
            if self.training:
                self._update_statistics(h.detach(), idx, counts)
            if self.rotation_trick:
                q_st = _RotateTo.apply(h, q.detach())  # value exactly q, rotated gradient
            else:
                q_st = q + (h - h.detach())  # straight-through; value exactly q
            q_st = self.factor_out(q_st)  # (N, D)
        quantized = to_channel_first(self.project_out(q_st.to(flat.dtype).view_as(y)))
        indices = idx.view(y.shape[:-1])
        logs = stats_from_counts(counts) | {"commitment": commit.detach()}
        return QuantizerOutput(quantized, Tokens(indices), loss, logs)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tokens:
        """Indices of the nearest codes, ``(B, C, *S) -> (B, *S)``; changes no statistics."""
        check_feature_map(z, self.in_channels)
        y = self.project_in(to_channel_last(z)).float()
        with torch.autocast(z.device.type, enabled=False):
            h = self._to_lookup(y.reshape(-1, self.dim))  # (N, d)
            idx = nearest_code(h, self._codes(), self.cosine)
        return Tokens(idx.view(y.shape[:-1]))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Codes as ``forward`` gives them to ``project_out``, channel-last:
        ``(B, *S) -> (B, *S, D)``."""
        self.check_indices(indices)
        with torch.autocast(indices.device.type, enabled=False):
            return self.factor_out(F.embedding(indices, self._codes()))

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Index of the nearest code for channel-last ``codes`` ``(B, *S, D) -> (B, *S)``: the
        inverse of ``indices_to_codes`` (codes off the codebook snap to the nearest)."""
        if codes.dim() < 1 or codes.shape[-1] != self.dim:
            raise ValueError(
                f"codes must be channel-last (..., {self.dim}), got shape {tuple(codes.shape)}: "
                "move the channels last (x.movedim(1, -1))"
            )
        with torch.no_grad(), torch.autocast(codes.device.type, enabled=False):
            table = self.factor_out(self._codes())  # (K, D)
            idx = nearest_code(codes.reshape(-1, self.dim).float(), table)
        return idx.view(codes.shape[:-1])

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

    def extra_repr(self) -> str:
        options = [
            f"{name}=True"
            for name in ("ema", "cosine", "rotation_trick", "simvq")
            if getattr(self, name)
        ]
        if self.codebook_dim != self.dim:
            options.append(f"codebook_dim={self.codebook_dim}")
        return ", ".join([f"codebook_size={self.codebook_size}, dim={self.dim}", *options])

    # -- the lookup space --------------------------------------------------------------------
    def _to_lookup(self, x: Tensor) -> Tensor:
        """Rows ``(N, D)`` fp32 -> the space of the lookup ``(N, d)``: projected, normalised."""
        h = self.factor_in(x)
        return l2norm(h) if self.cosine else h

    def _codes(self) -> Tensor:
        """The K codes in the space of the lookup, fp32 ``(K, d)``: the codebook, SimVQ's
        ``C W``, l2-normalised under ``cosine``; differentiable in what is learned."""
        codes = self.codebook.float()
        if self.simvq:
            codes = F.linear(codes, self.codebook_transform.weight.float())  # C W: (K, d)
        return l2norm(codes) if self.cosine else codes

    # -- training-time codebook maintenance --------------------------------------------------
    @torch.no_grad()
    def _init_from_data(self, x: Tensor) -> None:
        """Data or k-means initialisation on the first training batch (rank 0's, broadcast)."""
        if self.init == "kmeans":
            centres = kmeans(x, self.codebook_size, self.kmeans_iters, self.cosine)
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
