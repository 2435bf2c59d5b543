"""MaskGIT prior: a bidirectional transformer that predicts masked tokens (Chang et al. 2022).

The sequence is ``[class token] + primary grid (raster order) + secondary tokens`` and, with
``model_mask=True`` (MVQ tokens; not in the paper, which draws the mask at random), ``M``
mask tokens of ``b`` bits after them (a mask codebook's index: one token, ``2**b`` = J values,
``PriorLayout.mask_token_width``). Each stream has its own vocabulary embedding with one
extra ``[MASK]`` id (``K1`` for primary, ``K2`` for secondary, ``2**b`` for the mask tokens)
and its own output head over its real vocabulary only, so a sampler can never draw
``[MASK]``. Training masks ``ceil(gamma(r) * N)`` random positions per instance,
``r ~ U(0, 1)``, ``gamma(r) = cos(pi r / 2)`` by default, and takes the cross-entropy on the
masked positions only. ``sample_maskgit`` in ``mvq.sampling`` decodes iteratively.

Note on the logs: ``nll`` is the masked-token cross-entropy (nats per masked token), which
is not a likelihood of the tokens; ``bits_per_image`` = ``nll * N / ln 2`` is reported for
comparability of training curves only, not as a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.core.pretrained import PretrainedMixin
from mvq.priors.common import LN2, PRIORS, PriorLayout, check_batch
from mvq.priors.mask_schedules import SCHEDULES, mask_schedule
from mvq.priors.transformer import Block, init_gpt_weights


@dataclass
class MaskGITPriorConfig(PriorLayout):
    """Token layout (see ``PriorLayout``), transformer sizes and the training mask schedule."""

    layers: int = 4
    heads: int = 4
    dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.schedule}'; choose from {list(SCHEDULES)}")


class MaskGITPrior(nn.Module, PretrainedMixin):
    """Bidirectional transformer over primary + secondary (+ mask) tokens with ``[MASK]`` ids."""

    config_class = MaskGITPriorConfig

    def __init__(self, config: MaskGITPriorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.primary_emb = nn.Embedding(c.primary_vocab + 1, c.dim)
        self.secondary_emb = nn.Embedding(c.secondary_vocab + 1, c.dim) if c.has_secondary else None
        self.mask_emb = nn.Embedding(c.mask_vocab + 1, c.dim) if c.model_mask else None
        self.class_emb = nn.Embedding(c.num_classes, c.dim) if c.num_classes else None
        self.pos_emb = nn.Parameter(torch.zeros(c.num_tokens + (c.num_classes > 0), c.dim))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.heads, c.mlp_ratio, c.dropout, causal=False) for _ in range(c.layers)
        )
        self.ln_f = nn.LayerNorm(c.dim)
        self.primary_head = nn.Linear(c.dim, c.primary_vocab)
        self.secondary_head = nn.Linear(c.dim, c.secondary_vocab) if c.has_secondary else None
        self.mask_head = nn.Linear(c.dim, c.mask_vocab) if c.model_mask else None
        init_gpt_weights(self, c.layers)

    @property
    def primary_mask_id(self) -> int:
        """The ``[MASK]`` id of the primary stream (``K1``)."""
        return self.config.primary_vocab

    @property
    def secondary_mask_id(self) -> int:
        """The ``[MASK]`` id of the secondary stream (``K2``)."""
        return self.config.secondary_vocab

    @property
    def mask_stream_mask_id(self) -> int:
        """The ``[MASK]`` id of the mask-token stream (``2**b``; only with ``model_mask``)."""
        return self.config.mask_vocab

    def forward(
        self,
        primary: Tensor,
        secondary: Tensor | None = None,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Logits for every position of partly masked sequences.

        Args:
            primary: ``(B, S)`` ids in ``[0, K1]`` (``K1`` = ``[MASK]``).
            secondary: ``(B, S')`` ids in ``[0, K2]`` when the prior has a secondary stream.
            labels: ``(B,)`` class labels for a class-conditional prior.
            mask: ``(B, M)`` mask-token ids in ``[0, 2**b]`` when the prior models the mask.

        Returns:
            primary logits ``(B, S, K1)``, secondary logits ``(B, S', K2)`` or None, and mask
            logits ``(B, M, 2**b)`` or None (None unless ``model_mask``).
        """
        parts = [self.primary_emb(primary)]  # (B, S, C)
        if self.secondary_emb is not None and secondary is not None:
            parts.append(self.secondary_emb(secondary))  # (B, S', C)
        if self.mask_emb is not None and mask is not None:
            parts.append(self.mask_emb(mask))  # (B, M, C)
        if self.class_emb is not None and labels is not None:
            parts.insert(0, self.class_emb(labels)[:, None])  # (B, 1, C)
        x = self.drop(torch.cat(parts, 1) + self.pos_emb)  # (B, N (+1), C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x[:, -self.config.num_tokens :])  # drop the class position
        S, S2 = self.config.primary_len, self.config.secondary_len
        logits_p = self.primary_head(x[:, :S])
        logits_s = None if self.secondary_head is None else self.secondary_head(x[:, S : S + S2])
        logits_m = None if self.mask_head is None else self.mask_head(x[:, S + S2 :])
        return logits_p, logits_s, logits_m

    def random_mask(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B, N)`` bool, True at ``ceil(gamma(r) N)`` random positions, ``r ~ U(0, 1)``."""
        N = self.config.num_tokens
        ratio = mask_schedule(self.config.schedule, torch.rand(batch_size, device=device))
        count = torch.ceil(ratio * N).clamp(1, N)  # (B,)
        ranks = torch.rand(batch_size, N, device=device).argsort(1).argsort(1)  # (B, N)
        return ranks < count[:, None]

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy on the masked positions (nats per masked token) and its logs."""
        primary, secondary, labels, mask_tokens = check_batch(batch, self.config)
        B = primary.shape[0]
        # the streams in sequence order: name, (B, L) targets, [MASK] id
        streams = [("primary", primary.reshape(B, -1), self.primary_mask_id)]
        if secondary is not None:
            streams.append(("secondary", secondary.reshape(B, -1), self.secondary_mask_id))
        if mask_tokens is not None:
            streams.append(("mask", mask_tokens, self.mask_stream_mask_id))
        masked = self.random_mask(B, primary.device)  # (B, N)
        sizes = [target.shape[1] for _, target, _ in streams]
        parts = masked.split(sizes, 1)
        inputs = {name: t.masked_fill(m, i) for (name, t, i), m in zip(streams, parts, strict=True)}
        logits = self(inputs["primary"], inputs.get("secondary"), labels, inputs.get("mask"))
        logits = [lg for lg in logits if lg is not None]  # (B, L, vocab) per stream
        ce = torch.cat(
            [
                F.cross_entropy(lg.transpose(1, 2), target, reduction="none")
                for lg, (_, target, _) in zip(logits, streams, strict=True)
            ],
            1,
        )  # (B, N)
        m = masked.to(ce.dtype)
        loss = (ce * m).sum() / m.sum()
        logs = {"nll": loss.detach(), "mask_ratio": m.mean()}
        # per stream; 0 when a batch happened to mask no token of that stream
        masked_ce = (ce * m).split(sizes, 1)
        for (name, _, _), ce_i, m_i in zip(streams, masked_ce, m.split(sizes, 1), strict=True):
            logs[f"nll_{name}"] = ce_i.sum().detach() / m_i.sum().clamp_min(1)
        logs["bits_per_image"] = loss.detach() * self.config.num_tokens / LN2
        return loss, logs


def _maskgit(size: tuple[int, int, int], **overrides) -> MaskGITPrior:
    """A ``MaskGITPrior`` of (layers, heads, dim) ``size`` over 4x4 + 1 tokens with
    K = 128 + 128; ``overrides`` may change any field, sizes included."""
    values = dict(primary_grid=(4, 4), layers=size[0], heads=size[1], dim=size[2])
    return MaskGITPrior(MaskGITPriorConfig(**{**values, **overrides}))


@PRIORS.register("maskgit_small", MaskGITPrior)
def maskgit_small(**overrides) -> MaskGITPrior:
    """4 layers, 4 heads, 128 units (about 0.8 M parameters)."""
    return _maskgit((4, 4, 128), **overrides)


@PRIORS.register("maskgit_base", MaskGITPrior)
def maskgit_base(**overrides) -> MaskGITPrior:
    """12 layers, 8 heads, 256 units (about 9.5 M parameters, the size of transformer_16p1)."""
    return _maskgit((12, 8, 256), **overrides)
