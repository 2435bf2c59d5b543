"""Binary spherical quantization (BSQ; Zhao, Xiong and Krähenbühl, 2024, arXiv 2406.07548).

LFQ on the unit sphere: the (projected) input is l2-normalised per position, ``u = v / ‖v‖``,
and quantised to ``û = sign(u) / √d``, which lies on the sphere too, so the quantisation error
is bounded (``‖u − û‖ < √2``) whatever the encoder outputs. Codes, indices (channel ``i`` is
bit ``i``, least significant first), the straight-through gradient (through the
normalisation), the logs, fp32 under autocast and the entropy computation are LFQ's
(``mvq.quantizers.lfq``), with code magnitude ``s = 1/√d``. So is the absence of a codebook to
learn: EMA updates, k-means initialisation and dead-code restarts do not apply.

Entropy terms. The per-sample entropy is computed analytically, as the paper
does: ``q(ĉ|u)`` factorises over channels, ``q(ĉ_i = 1/√d | u) = σ(4 u_i / (√d τ))``, and
``H(q(·|u))`` is the sum of ``d`` binary entropies; exact. The codebook entropy
``H(E_u[q(·|u)])`` is exact over all ``2^d`` codes by default (vector-quantize-pytorch's
definition; see ``lfq`` for how it is computed without an ``(N, 2^d)`` matrix);
``entropy_group_size = g`` gives the paper's approximation, the sum of the exact entropies of
groups of ``g`` channels (the official code's ``group_size``: 9 by default there, 1 — one group
per channel — in its 18-bit ImageNet configuration). The official code also divides the
entropy penalty by ``1/τ``; that is 1 at its default ``τ = 1`` and is not done here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mvq.quantizers.lfq import LFQ


class BSQ(LFQ):
    """Binary spherical quantization with an optional 1×1 projection to and from ``d`` channels.

    With ``v`` the (projected) input at one position and ``τ`` = ``temperature``:

    - ``u = v / ‖v‖₂``; code ``û = sign(u)/√d`` (``u_i = 0`` → ``−1/√d``), index
      ``Σ_i 2^i [u_i > 0]``; the decoder gets ``û`` with the straight-through gradient of ``u``;
    - soft assignment ``q(c | u) = softmax_c(−‖u − c‖²/τ) = softmax_c(2 uᵀc/τ)``,
      ``c ∈ {−1/√d, 1/√d}^d``;
    - ``loss = entropy_weight·(E_u[H(q(·|u))] − diversity_gamma·H(E_u[q(·|u)]))
      + commitment_weight·‖u − sg(û)‖²/d`` (the squared error is a mean over channels and
      positions, as in vector-quantize-pytorch; the official code sums over channels). The
      entropy terms are computed in training mode only; in eval ``loss`` is the commitment term.

    Args:
        dim: ``d``, bits per token; the implicit codebook has ``2^d`` codes, ``1 ≤ d ≤ 30``.
        in_channels: channels of the feature map; when it differs from ``d``, linear projections
            ``C -> d`` before and ``d -> C`` after the quantiser are added. Defaults to ``d``.
        entropy_weight: weight of the entropy penalty, 0.1 (the official configs' loss weight
            0.1 on ``zeta = 1``; vector-quantize-pytorch's default).
        commitment_weight: weight of the commitment loss, 0 (the official ``beta = 0`` and
            vector-quantize-pytorch's default: on the sphere the error is bounded already).
        diversity_gamma: weight of the codebook entropy, 1.0 (official ``gamma = gamma0 = 1``).
        temperature: ``τ``, 1.0 (the official ``inv_temperature = 1``; vector-quantize-pytorch's
            forward uses ``inv_temperature = 100``, i.e. ``τ = 0.01``, for BSQ as for LFQ).
        entropy_group_size: ``None`` (default) for the exact codebook entropy, ``g`` for the
            paper's group approximation (see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        in_channels: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.0,
        diversity_gamma: float = 1.0,
        temperature: float = 1.0,
        entropy_group_size: int | None = None,
    ) -> None:
        super().__init__(
            dim,
            in_channels,
            entropy_weight=entropy_weight,
            commitment_weight=commitment_weight,
            diversity_gamma=diversity_gamma,
            temperature=temperature,
            entropy_group_size=entropy_group_size,
        )
        # s = 1/√d rounded once in fp32, as F.normalize gives it for a ±1 vector
        self.scale = float(torch.tensor(float(dim)).sqrt().reciprocal())

    def _prepare(self, x: Tensor) -> Tensor:
        """Project ``x`` ``(..., d)`` onto the unit sphere."""
        return F.normalize(x, dim=-1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", spherical"
