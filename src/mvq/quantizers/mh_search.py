"""The MH-Dropout search's view of f: its first and last layers as affine ends around a trunk
of rows (``AffineEnds``), the trunk without autograd (``SearchTrunk``: eager, bf16 products, or
``torch.compile``d through ``trunk_math``), and ``affine_ends(f)``, which gives them for
Table 3's f, for a network with its own ``affine_ends`` method (the default MLP), or None.

On 1x1 codes f's first layer is linear in the mask m, ``first(e' * m) = W diag(e') m + b``,
and its last is linear, so a search can score all J hypotheses in the trunk's output space
(``MaskedVectorQuantizer._first_pass``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.nets.table3 import MHNetwork, center_tap


class AffineEnds(NamedTuple):
    """An MH network on 1x1 codes as affine ends around a trunk of rows.

    ``f(c).flatten(1) = trunk(c.flatten(1) @ in_weight.T + in_bias) @ out_weight.T + out_bias``,
    the output flattened in (D, gh, gw) order. The first layer is linear in the code, hence in
    the mask; the last is linear, so a search can score hypotheses in the trunk's P-dimensional
    output space. ``trunk`` maps rows ``(N, C) -> (N, P)`` without autograd and may overwrite
    its input; its input and output are ``dtype`` (fp32 for Table 3's f, whose products may
    run in bf16 inside).
    """

    in_weight: Tensor  # (C, D')
    in_bias: Tensor  # (C,)
    trunk: Callable[[Tensor], Tensor]
    out_weight: Tensor  # (Q, P), Q = D * gh * gw
    out_bias: Tensor  # (Q,)
    dtype: torch.dtype
    trunk_args: tuple | None = None  # compiled trunks: trunk(h) == trunk_math(h, *trunk_args)


def trunk_math(
    h: Tensor,
    mats: list[Tensor],
    norms: list[Tensor],
    slope: float,
    eps: float,
    num_convs: int,
    num_blocks: int,
) -> Tensor:
    """``MHNetwork.trunk_rows`` as a pure function of its tensors, for ``torch.compile``.

    ``mats``: each conv's ``(C_in + 1, C_out)`` centre tap with its bias as the last row, in
    the products' dtype, in the order convs, (conv3, conv1) per residual block, proj.
    ``norms``: fp32 weight and bias of each GroupNorm in turn (norms, block norms, the stack's
    last). ``h`` ``(N, C)`` fp32 -> ``(N, D)`` fp32; products in the mats' dtype.
    """

    def norm(i: int, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[1:], norms[2 * i], norms[2 * i + 1], eps)

    def linear(i: int, x: Tensor) -> Tensor:  # act(x) @ W + b, back in fp32
        w = mats[i]  # the bias is added in fp32, fused into the next norm's pass
        return (F.leaky_relu(x, slope).to(w.dtype) @ w[:-1]).float() + w[-1].float()

    h = norm(0, h)
    for i in range(num_convs):
        h = norm(1 + i, linear(i, h))
    for k in range(num_blocks):
        t = norm(1 + num_convs + k, linear(num_convs + 2 * k, h))  # (N, res_channels)
        h = h + linear(num_convs + 2 * k + 1, t)
    return linear(num_convs + 2 * num_blocks, norm(1 + num_convs + num_blocks, h))  # (N, D)


@functools.cache
def compile_once(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` through ``torch.compile``, built on first use and shared. The search functions
    take every tensor as an argument, so new weights (each search copies them) never
    recompile them."""
    return torch.compile(fn, fullgraph=True)


class SearchTrunk:
    """``MHNetwork.trunk_rows`` without autograd, for a search over many rows in chunks.

    Each matrix is the conv's centre tap with its bias appended as a last input row
    ``(C_in + 1, C_out)``, and each activation is written next to a column of ones: the bias
    rides in the product, saving the pass that ``addmm`` spends copying it into every output
    row. The residual sum accumulates in place. (Writing every intermediate into reused
    buffers, layer norms included, was slower inside a training step: no page faults to save
    there, and ``out=`` into strided views costs copies.) Weights are copied when the trunk is built
    (once per search), so it always sees the current parameters.

    ``matmul_dtype`` is the precision of the matrix products only: with ``torch.bfloat16`` the
    activations are rounded to bf16 as they are written next to the ones column and each
    product comes back to fp32, while inputs, layer norms, the residual sum and the output stay
    fp32. On CPUs with AMX (and on GPUs) the products run about 4x faster; a bf16 layer norm
    would be slower on the CPU than fp32. ``compiled`` runs ``trunk_math`` through
    ``torch.compile`` instead, which fuses each norm, activation and rounding into one pass.
    """

    dtype = torch.float32  # the trunk's input and output dtype, whatever the products use

    def __init__(self, f: MHNetwork, matmul_dtype: torch.dtype, compiled: bool = False) -> None:
        self.f, self.slope, self.matmul_dtype = f, f.act.negative_slope, matmul_dtype
        self.compiled = compiled
        taps = f.row_weights()
        w = {conv: torch.cat([taps[conv], conv.bias[None]]) for conv in taps}
        self.w = {conv: m.to(matmul_dtype) for conv, m in w.items()}
        norms = [*f.norms, *(b.norm for b in f.res.blocks), f.res.norm]
        self.norms = {m: (m.weight.float(), m.bias.float(), m.eps) for m in norms}
        self.buffers: dict[tuple[int, int], Tensor] = {}

    def _norm(self, m: nn.GroupNorm, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[1:], *self.norms[m])

    def _act(self, x: Tensor) -> Tensor:
        """LeakyReLU of fp32 ``x`` written into a reused ``(N, C + 1)`` buffer of the products'
        dtype ending in ones (``x`` is left as it is: the residual stream passes through)."""
        n, c = x.shape
        buf = self.buffers.get((n, c))
        if buf is None:
            buf = self.buffers[(n, c)] = x.new_ones(n, c + 1, dtype=self.matmul_dtype)
        if self.matmul_dtype == x.dtype:
            torch.ops.aten.leaky_relu.out(x, self.slope, out=buf[:, :c])
        else:  # rounded into the buffer, then the activation in place there
            F.leaky_relu_(buf[:, :c].copy_(x), self.slope)
        return buf

    def _mm(self, a: Tensor, w: Tensor) -> Tensor:
        """``a @ w`` in the products' dtype, returned in fp32."""
        out = a @ w
        return out if out.dtype == torch.float32 else out.float()

    def args(self) -> tuple:
        """The arguments after ``h`` of ``trunk_math`` that compute this trunk."""
        f = self.f
        blocks = [conv for b in f.res.blocks for conv in (b.conv3, b.conv1)]
        mats = [self.w[conv] for conv in (*f.convs, *blocks, f.proj)]
        norms = [t for w, b, _ in self.norms.values() for t in (w, b)]
        eps = {e for _, _, e in self.norms.values()}
        if len(eps) != 1:
            raise ValueError("a compiled search needs one eps for all of f's GroupNorms")
        return mats, norms, self.slope, eps.pop(), len(f.convs), len(f.res.blocks)

    @torch.no_grad()
    def __call__(self, h: Tensor) -> Tensor:
        """``(N, C)`` first-layer outputs -> ``(N, D)`` inputs of ``expand``, both fp32."""
        if self.compiled:
            return compile_once(trunk_math)(h, *self.args())
        f, w, norm, mm = self.f, self.w, self._norm, self._mm
        h = norm(f.norms[0], h)
        for conv, n in zip(f.convs, f.norms[1:], strict=True):
            h = norm(n, mm(self._act(h), w[conv]))
        for block in f.res.blocks:
            t = norm(block.norm, mm(self._act(h), w[block.conv3]))  # (N, res_channels)
            a = self._act(t)
            if self.matmul_dtype == h.dtype:
                h = h.addmm_(a, w[block.conv1])
            else:
                h = h.add_(a @ w[block.conv1])  # fp32 sum of a bf16 product
        return mm(self._act(norm(f.res.norm, h)), w[f.proj])  # (N, D)


def table3_affine_ends(
    f: MHNetwork, dtype: torch.dtype | None = None, compiled: bool = False
) -> AffineEnds:
    """f on 1x1 codes as ``AffineEnds``, for a no-grad search over many masks.

    The trunk's matrix products run in ``dtype`` (default: the weights'; bfloat16 for a
    fast approximate pass), its norms, sums and output in fp32 (``AffineEnds.dtype``), with
    copies of the weights made by this call; ``compiled`` runs the trunk through
    ``torch.compile`` (its first call compiles, for seconds). Nothing is cached across calls, so
    call it once per search: later weight updates (an optimizer step, ``load_state_dict``,
    an in-place copy) are always seen by the next search.
    """
    g2 = f.grid**2
    if f.expand is None:
        out_w, out_b = torch.eye(f.out_dim), torch.zeros(f.out_dim)
        out_w, out_b = out_w.to(f.proj.weight), out_b.to(f.proj.weight)
    else:  # out[d, i, j] = sum_c u[c] W[c, d, i, j] + bias[d]
        out_w = f.expand.weight.flatten(1).t()  # (D * g * g, D)
        out_b = f.expand.bias.repeat_interleave(g2)  # (D * g * g,)
    trunk = SearchTrunk(f, dtype or f.proj.weight.dtype, compiled)
    return AffineEnds(
        center_tap(f.first),
        f.first.bias,
        trunk,
        out_w,
        out_b,
        trunk.dtype,
        trunk.args() if compiled else None,
    )


def affine_ends(
    f: nn.Module, dtype: torch.dtype | None = None, compiled: bool = False
) -> AffineEnds | None:
    """f on 1x1 codes as ``AffineEnds``, or None when f is not affine at both ends as far as
    mvq knows (then the search runs f itself on every hypothesis).

    ``dtype`` is the trunk's product precision (default: the weights'; bfloat16 for a fast
    approximate pass) and ``compiled`` runs the trunk through ``torch.compile`` (Table 3's f;
    other networks ignore both). Weights are copied by this call: call it once per search.
    """
    if isinstance(f, MHNetwork):
        return table3_affine_ends(f, dtype, compiled)
    own = getattr(f, "affine_ends", None)
    return own(dtype, compiled=compiled) if callable(own) else None
