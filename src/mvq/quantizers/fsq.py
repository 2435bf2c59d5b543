"""Finite Scalar Quantization (Mentzer et al., ICLR 2024): an implicit codebook from rounding.

Each of the ``d = len(levels)`` channels is squashed by ``tanh`` into a fixed range and rounded to
one of ``L_i`` values; the codebook is the grid of all combinations (``prod(levels)`` codes), so
there are no codebook parameters and no auxiliary loss. ``bound`` picks how a channel is bounded:

- ``"reference"`` (default): the paper's appendix listing, bit for bit: ``eps = 1e-3``,
  ``half_l = (L-1)(1-eps)/2``, ``offset = 0.5`` for even ``L``, ``shift = tan(offset/half_l)``,
  ``codes = round(tanh(z + shift)·half_l − offset) / (L//2)``. Even ``L`` gives the asymmetric
  grid ``{−L/2 … L/2−1}/(L/2)``.
- ``"vqpytorch"``: vector-quantize-pytorch's variant, ``(1+eps)`` and ``atanh`` for the shift.
  Same grid as the reference; codes differ by one level near bin boundaries (about 1% of tokens).
- ``"symmetric"``: the symmetry-preserving bound (arXiv 2411.19842 §3.2, vector-quantize-pytorch's
  ``preserve_symmetry``): level ``k = floor((L−1)(tanh(z)+1)/2 + 0.5)`` in ``{0 … L−1}`` and
  ``code = (2k − (L−1))/(L−1)``, i.e. ``(L−1)/2·tanh(z)`` rounded onto the grid of ``L`` points
  symmetric about 0 (half-integers for even ``L``), rescaled to ``[−1, 1]``; ``z = 0`` lands on
  a bin boundary for even ``L``. The only bound that allows ``L = 2``. Levels and indices equal
  vector-quantize-pytorch's; its codes ``2k/(L−1) − 1`` can be one ulp off the exactly
  symmetric grid ours gives.

Quantisation always runs in fp32 (bf16 rounds ``tanh`` to the wrong bin): ``quantize`` returns
float32 whatever the input dtype and ignores autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd, prod

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from mvq.core.registry import closest_hint
from mvq.core.tokens import Tokens
from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    codebook_stats,
    to_channel_first,
    to_channel_last,
)

EPS = 1e-3
TILE = 64  # rows per tile of the constants for channel-last inputs (see FSQ._quantize)
BOUNDS = ("reference", "vqpytorch", "symmetric")
# Largest level the eps-bounds reach exactly: (L-1)·eps < 1. Above it "reference" can no longer
# reach its extreme levels and "vqpytorch" rounds past them (two codes, one index).
MAX_LEVEL = 1000
# The paper's choices (Mentzer et al., Table 1); their products are close to, not equal to, 2^k.
RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


class _BoundAndRound(torch.autograd.Function):
    """Bound, round and rescale in one autograd node: ``z`` ``(..., d)`` fp32 -> (codes, levels).

    Value-identical to the unfused formula with ``round_ste(x) = x + sg(round(x) - x)`` (the
    straight-through sum is exact in fp32); the gradient is that of the bound,
    ``(1 - tanh²)·grad_scale``. One node instead of eight, and no saved intermediates but
    ``tanh``: about 25% less time for forward+backward of the quantiser on the CPU.
    ``z`` is processed as ``z.view(-1, width)`` when ``width`` > 0, else as ``z.movedim(-1, 0)``,
    and ``consts`` broadcast against that view (see ``FSQ._layout``). Both outputs own their
    memory (no views), so callers may modify them in place.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, z: Tensor, consts: tuple[Tensor, ...], symmetric: bool, width: int
    ) -> tuple[Tensor, Tensor]:
        def as_x(t: Tensor) -> Tensor:
            return t.view(-1, width) if width else t.movedim(-1, 0)

        codes, levels = torch.empty_like(z), torch.empty_like(z)
        if symmetric:  # level k = floor((L-1)(tanh z + 1)/2 + 0.5), code = (2k - (L-1))/(L-1)
            lm1, grad_scale = consts
            t = torch.tanh(as_x(z))
            torch.floor((t + 1).mul_(lm1).div_(2).add_(0.5), out=as_x(levels))
            torch.div((as_x(levels) * 2).sub_(lm1), lm1, out=as_x(codes))
        else:  # round(tanh(z + shift)·half_l - offset) / (L//2), level = rounded + L//2
            shift, half_l, offset, half_width, grad_scale = consts
            t = torch.tanh(as_x(z) + shift)
            rounded = (t * half_l).sub_(offset).round_()
            torch.div(rounded, half_width, out=as_x(codes))
            torch.add(rounded, half_width, out=as_x(levels))
        ctx.save_for_backward(t)
        ctx.grad_scale, ctx.width, ctx.shape = grad_scale, width, z.shape
        ctx.mark_non_differentiable(levels)
        ctx.set_materialize_grads(False)  # no zero tensor for the levels' (absent) gradient
        return codes, levels

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_codes: Tensor | None, grad_levels: None
    ) -> tuple[Tensor | None, None, None, None]:
        if grad_codes is None:
            return None, None, None, None
        (t,) = ctx.saved_tensors
        g = grad_codes.reshape(t.shape) if ctx.width else grad_codes.movedim(-1, 0)
        grad = (t * t).neg_().add_(1).mul_(ctx.grad_scale).mul_(g)  # (1 - tanh²)·s·g
        return (grad.view(ctx.shape) if ctx.width else grad.movedim(0, -1)), None, None, None


def check_levels(levels: Sequence[int], bound: str = "reference") -> tuple[int, ...]:
    """Return ``levels`` as a tuple, or raise one clear error saying what is wrong and the fix."""
    if bound not in BOUNDS:
        raise ValueError(
            f"unknown FSQ bound '{bound}'{closest_hint(str(bound), list(BOUNDS))}; "
            f"choose one of {', '.join(BOUNDS)}"
        )
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(
            f"FSQ levels must be a non-empty sequence of ints such as (8, 5, 5, 5), got {levels!r}"
        )
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in levels):
        raise ValueError(f"FSQ levels must be ints, got {levels!r}: pass e.g. (8, 5, 5, 5)")
    if min(levels) < 2:
        raise ValueError(f"every FSQ level must be >= 2, got {tuple(levels)}: use levels >= 5")
    if bound != "symmetric" and min(levels) == 2:
        # half_l = (1-eps)/2 < offset = 0.5: tan(offset/half_l) puts the bin edge at z = -1.56
        # (most inputs get one code) and atanh ("vqpytorch") is NaN.
        raise ValueError(
            f"level 2 breaks the {bound!r} FSQ bound (offset 0.5 exceeds half_l = (1-eps)/2), "
            f"got {tuple(levels)}: use levels >= 3 (>= 5 recommended) or bound='symmetric'"
        )
    if bound != "symmetric" and max(levels) > MAX_LEVEL:
        raise ValueError(
            f"FSQ levels above {MAX_LEVEL} do not fit the eps = {EPS} bound, got {tuple(levels)}: "
            "split the level into several channels or use bound='symmetric'"
        )
    if prod(levels) >= 2**63:
        raise ValueError(f"FSQ codebook size prod{tuple(levels)} does not fit in int64 indices")
    return tuple(levels)


def _factorisations(n: int, largest: int) -> list[tuple[int, ...]]:
    """All non-increasing factorisations of ``n`` into factors in ``[3, largest]``."""
    if n == 1:
        return [()]
    out = []
    for f in range(min(n, largest), 2, -1):
        if n % f == 0:
            out += [(f, *rest) for rest in _factorisations(n // f, f)]
    return out


def levels_for_codebook_size(n: int, exact: bool = False) -> tuple[int, ...]:
    """FSQ levels for a codebook of about ``n`` codes.

    The five sizes 2^8 … 2^16 give the paper's recommended sets (whose products are near, not
    equal to, ``n``: 240, 1000, 4375, 15360, 64000) unless ``exact``. Any other ``n`` is
    factorised exactly into levels in ``[3, 1000]``, choosing, in order: the fewest levels below
    5 (they hurt, per the paper), then the smallest largest level (many channels of 5–8 levels,
    as in the paper's sets), then the fewest channels. E.g. 8 → (8,), 16 → (16,), 128 → (16, 8),
    512 → (8, 8, 8), 2^11 → (16, 16, 8), 1000 → (8, 5, 5, 5). The levels come largest first.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 3 <= n < 2**63:
        raise ValueError(f"codebook size must be an int in [3, 2^63), got {n!r}")
    if not exact and n in RECOMMENDED_LEVELS:
        return RECOMMENDED_LEVELS[n]
    candidates = _factorisations(n, MAX_LEVEL)
    if not candidates:
        raise ValueError(
            f"codebook size {n} cannot be matched exactly by FSQ levels in [3, {MAX_LEVEL}] "
            f"(it has a prime factor above {MAX_LEVEL} or is 2·prime): pick a nearby size, "
            f"e.g. one of {sorted(RECOMMENDED_LEVELS)}"
        )
    return min(candidates, key=lambda c: (sum(x < 5 for x in c), c[0], len(c), c))


class FSQ(nn.Module):
    """Finite Scalar Quantization with an optional 1×1 projection to and from ``d`` channels.

    Args:
        levels: levels per quantised channel, e.g. ``(8, 5, 5, 5)``; ``d = len(levels)``.
        in_channels: channels of the feature map; when it differs from ``d``, linear projections
            ``C -> d`` before and ``d -> C`` after the quantiser are added. Defaults to ``d``.
        bound: ``"reference"`` (the paper, bit-exact), ``"vqpytorch"`` or ``"symmetric"``;
            see the module docstring.
    """

    def __init__(
        self, levels: Sequence[int], in_channels: int | None = None, bound: str = "reference"
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels, bound)
        self.bound = bound
        self.dim = len(self.levels)
        self.in_channels = self.dim if in_channels is None else int(in_channels)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.codebook_size = prod(self.levels)
        self.has_projections = self.in_channels != self.dim
        self.project_in = nn.Linear(self.in_channels, self.dim) if self.has_projections else None
        self.project_out = nn.Linear(self.dim, self.in_channels) if self.has_projections else None
        basis = [prod(self.levels[:i]) for i in range(self.dim)]  # [1, L0, L0·L1, ...]
        self.register_buffer("levels_int", torch.tensor(self.levels), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        self._make_constants(device=None)
        self._cache: dict[tuple[int, int], tuple[Tensor, ...]] = {}  # see _layout
        self._cache_src: Tensor | None = None

    def _make_constants(self, device: torch.device | None) -> None:
        """(Re)build the fp32 constants, each ``(d,)``, as non-persistent buffers."""
        f32 = dict(dtype=torch.float32, device=device)
        lv = torch.tensor(self.levels, **f32)
        # fp32 arithmetic with the factor (1 ∓ eps) rounded once to fp32, like the JAX reference
        factor = torch.tensor(1 - EPS if self.bound == "reference" else 1 + EPS, **f32)
        half_l = (lv - 1) * factor / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(**f32)
        ratio = offset / half_l
        shift = torch.tan(ratio) if self.bound == "reference" else torch.atanh(ratio)
        half_width = torch.floor(lv / 2)  # L // 2
        if self.bound == "symmetric":  # the operands of _BoundAndRound, in its order
            fast = [lv - 1, torch.ones_like(lv)]
        else:  # the last is d code / d tanh
            fast = [shift, half_l, offset, half_width, half_l / half_width]
        constants = {
            "half_width": half_width,
            "levels_minus_1": lv - 1,
            "levels_f": lv,
            "basis_f": self.basis.to(**f32),  # exact: only used when codebook_size <= 2^24
            # (n, d·TILE): each constant repeated TILE times, for channel-last inputs
            "fast": torch.stack(fast).repeat(1, TILE),
        }
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)

    def _check_channels(self, x: Tensor, what: str) -> None:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"FSQ {what} must be channel-last (..., {self.dim}) for levels {self.levels}, "
                f"got shape {tuple(x.shape)}: move the channels last (x.movedim(1, -1))"
            )

    def _layout(self, z: Tensor) -> tuple[int, tuple[Tensor, ...]]:
        """How ``_BoundAndRound`` should view ``z`` ``(..., d)``: (width, constants).

        Broadcasting a ``(d,)`` vector over a contiguous last dim of size d is ~4x slower than
        over long rows, so the constants follow ``z``'s memory: channel-last memory is viewed as
        rows of ``d·k`` with the constants tiled ``k`` times; any other layout is processed
        channel-first with constants ``(d, 1, ..., 1)``. The slices are cached per layout.
        """
        if z.is_contiguous():
            width = self.dim * gcd(z.numel() // self.dim, TILE)
            key = (width, 0)
        else:
            width, key = 0, (0, z.dim())
        if self._cache_src is not self.fast:  # constants rebuilt or moved: drop stale slices
            self._cache, self._cache_src = {}, self.fast
        if key not in self._cache:
            fast = self.fast[:, :width] if width else self.fast[:, : self.dim]
            shape = (width,) if width else (self.dim, *[1] * (z.dim() - 1))
            self._cache[key] = tuple(c.reshape(shape) for c in fast)
        return width, self._cache[key]

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Channel-last ``(..., d)`` -> (codes, float levels in ``[0, L)``), both ``(..., d)``."""
        self._check_channels(z, "input")
        if self.fast.dtype != torch.float32:  # a .half()/.to(dtype) cast the constants
            self._make_constants(self.fast.device)
        z = z.float()
        width, consts = self._layout(z)
        with torch.autocast(z.device.type, enabled=False):
            return _BoundAndRound.apply(z, consts, self.bound == "symmetric", width)

    def quantize(self, z: Tensor) -> Tensor:
        """Channel-last ``z`` ``(..., d)`` -> codes ``(..., d)`` float32, straight-through grad.

        Runs in fp32 with autocast off whatever ``z``'s dtype: bf16 would pick wrong bins.
        """
        return self._quantize(z)[0]

    def _levels_to_indices(self, levels: Tensor) -> Tensor:
        """Float levels ``(..., d)`` -> indices ``(...)`` int64, mixed radix."""
        if self.codebook_size > 2**24:
            return (levels.long() * self.basis).sum(-1)
        # every partial sum is an integer below 2^24, exact in fp32 in any summation order
        if levels.is_contiguous():
            return (levels @ self.basis_f).long()
        return (levels * self.basis_f).sum(-1).long()

    def _code_to_level(self, codes: Tensor) -> Tensor:
        """Codes ``(..., d)`` -> the nearest level integers in ``[0, L)`` as fp32 ``(..., d)``."""
        if self.bound == "symmetric":
            return ((codes.float() + 1) * self.levels_minus_1 / 2).round()
        return (codes.float() * self.half_width + self.half_width).round()

    def _level_to_code(self, levels: Tensor) -> Tensor:
        """Level integers ``(..., d)`` -> codes ``(..., d)`` float32 as ``quantize`` gives them."""
        if self.bound == "symmetric":
            return (levels.float() * 2).sub_(self.levels_minus_1).div_(self.levels_minus_1)
        return (levels.float() - self.half_width) / self.half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes ``(..., d)`` -> indices ``(...)`` int64, mixed radix, first channel lowest digit.

        Codes off the grid snap to the nearest level; codes outside the grid raise.
        """
        self._check_channels(codes, "codes")
        levels = self._code_to_level(codes.detach())  # (..., d)
        if not ((levels >= 0) & (levels < self.levels_f)).all():  # also catches NaN
            raise ValueError(
                f"codes lie outside the FSQ grid for levels {self.levels} and bound "
                f"'{self.bound}': pass codes produced by quantize()/indices_to_codes()"
            )
        return self._levels_to_indices(levels)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices ``(...)`` -> codes ``(..., d)`` float32, exact inverse of codes_to_indices."""
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"FSQ indices must lie in [0, {self.codebook_size}) for levels {self.levels}, got "
                f"range [{int(indices.min())}, {int(indices.max())}]: check the token source"
            )
        levels = (indices.long().unsqueeze(-1) // self.basis) % self.levels_int  # (..., d)
        return self._level_to_code(levels)

    @property
    def implicit_codebook(self) -> Tensor:
        """All codes in index order, ``(codebook_size, d)`` float32."""
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self.basis.device))

    def _project_out(self, codes: Tensor) -> Tensor:
        """Codes ``(B, *S, d)`` -> decoder input ``(B, C, *S)``."""
        if self.project_out is not None:
            codes = self.project_out(codes.to(self.project_out.weight.dtype))  # (B, *S, C)
        return to_channel_first(codes)

    def _stats(self, indices: Tensor) -> dict[str, Tensor]:
        """``codebook_stats``; above 2^20 codes from the used codes only (no K-sized histogram)."""
        if self.codebook_size <= 2**20:
            return codebook_stats(indices, self.codebook_size)
        counts = torch.unique(indices, return_counts=True)[1].float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * probs.log()).sum())
        return {
            "usage": counts.new_tensor(len(counts) / self.codebook_size),
            "perplexity": perplexity,
        }

    def _channel_last_input(self, z: Tensor) -> Tensor:
        """Check ``z`` ``(B, C, *S)`` and return the quantiser's input ``(B, *S, d)``."""
        check_feature_map(z, self.in_channels)
        h = to_channel_last(z)  # (B, *S, C)
        return h if self.project_in is None else self.project_in(h)  # (B, *S, d)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise channel-first ``(B, C, *S)``; ``quantized`` is float32 unless projected."""
        codes, levels = self._quantize(self._channel_last_input(z))  # (B, *S, d) each
        with torch.no_grad():
            indices = self._levels_to_indices(levels)  # (B, *S)
            logs = self._stats(indices)
        loss = torch.zeros((), device=z.device)
        return QuantizerOutput(self._project_out(codes), Tokens(indices), loss, logs)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tokens:
        """Channel-first ``(B, C, *S)`` -> ``Tokens(indices=(B, *S) int64)``."""
        _, levels = self._quantize(self._channel_last_input(z))  # (B, *S, d)
        return Tokens(self._levels_to_indices(levels))

    def decode(self, tokens: Tokens | Tensor) -> Tensor:
        """``Tokens`` or indices ``(B, *S)`` -> exactly forward's ``quantized`` ``(B, C, *S)``."""
        indices = tokens.indices if isinstance(tokens, Tokens) else tokens
        if not isinstance(indices, Tensor) or indices.dim() < 2:
            raise ValueError(
                f"FSQ.decode takes Tokens or indices of shape (B, *spatial), got "
                f"{tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__}"
            )
        return self._project_out(self.indices_to_codes(indices))

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, in_channels={self.in_channels}, bound='{self.bound}', "
            f"codebook_size={self.codebook_size}"
        )
