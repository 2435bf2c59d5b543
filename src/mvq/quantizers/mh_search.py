"""The MH-Dropout search's view of f: its first and last layers as affine ends around a trunk
of rows (``AffineEnds``), the trunk without autograd (``SearchTrunk``: f's ``trunk_math``,
eager or ``torch.compile``d, products in fp32 or bf16), and ``affine_ends(f)``, which gives them for
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
from torch import Tensor, nn

from mvq.nets.table3 import MHNetwork, center_tap, trunk_math


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


@functools.cache
def compile_once(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` through ``torch.compile``, built on first use and shared. The search functions
    take every tensor as an argument, so new weights (each search copies them) never
    recompile them."""
    return torch.compile(fn, fullgraph=True)


class SearchTrunk:
    """Table 3's f's trunk (``trunk_math``) without autograd, for a search over many rows in
    chunks: eager, or through ``torch.compile`` (``compiled``: each norm, activation and
    rounding fused into one pass). ``matmul_dtype`` is the precision of the matrix products
    only: with ``torch.bfloat16`` the activations are rounded to bf16 for each product, which
    comes back to fp32, while inputs, layer norms, the residual sum and the output stay fp32
    (on CPUs with AMX, and on GPUs, the products run about 4x faster). The arguments are
    taken from f when the trunk is built (once per search), so it sees the current weights.
    """

    dtype = torch.float32  # the trunk's input and output dtype, whatever the products use

    def __init__(self, f: MHNetwork, matmul_dtype: torch.dtype, compiled: bool = False) -> None:
        self.compiled = compiled
        with torch.no_grad():
            mats, biases, norms, *rest = f.trunk_args(matmul_dtype)
            self._args = (
                [m.detach() for m in mats],
                [b.detach().float() for b in biases],
                [n.detach().float() for n in norms],
                *rest,
            )

    def args(self) -> tuple:
        """The arguments after ``h`` of ``trunk_math`` that compute this trunk."""
        return self._args

    @torch.no_grad()
    def __call__(self, h: Tensor) -> Tensor:
        """``(N, C)`` first-layer outputs -> ``(N, D)`` inputs of ``expand``, both fp32."""
        return (compile_once(trunk_math) if self.compiled else trunk_math)(h, *self._args)


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
