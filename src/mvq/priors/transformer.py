"""Autoregressive transformer prior over primary then secondary tokens (MVQ paper §4.1, Table 4).

Two GPT-style decoders (pre-LN, learned position embeddings, fused QKV, GELU MLP, attention by
``F.scaled_dot_product_attention``):

* the **primary** transformer reads ``[start, x_1, ..., x_{S-1}]`` and predicts ``x_1..x_S``
  (raster order); the start token is the class token ``c`` for a class-conditional prior;
* the **secondary** transformer reads ``[start, x_1, ..., x_S, s_1, ..., s_{S'-1}]`` and
  predicts ``s_1..s_{S'}`` from its last ``S'`` positions. It embeds the primary tokens itself
  as a prefix (the conditional GPT of taming-transformers), so every secondary token is
  conditioned on the whole primary sequence, the two networks train independently, and at
  sampling time the prefix is one parallel forward.
* with ``model_mask=True`` (MVQ tokens; not in the paper, which draws the mask at random) the
  secondary transformer continues with the ``M = ceil(D'/b)`` mask tokens of ``b`` bits each
  (a mask codebook's index: one token of vocabulary J):
  it reads ``[start, x, s, m_1, ..., m_{M-1}]`` and predicts ``s`` then ``m`` from its last
  ``S' + M`` positions, so a sampled mask is conditioned on the image's codes.

Parameter counts with Table 4's sizes, K1 = K2 = 128 (measured; the paper's in brackets)::

    transformer_1p1   primary 0.217 M (0.2)   secondary 0.225 M (0.2)
    transformer_4p1   primary 1.620 M (1.6)   secondary 0.843 M (0.8)
    transformer_16p1  primary 9.548 M (9.5)   secondary 3.263 M (3.2)

For sampling each decoder has a key/value cache: ``new_cache(B)`` preallocates
``(B, heads, T_max, head_dim)`` keys and values per layer, and ``forward(idx, cache, pos)``
writes the new positions in place and attends to the prefix (no concatenation per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.core.pretrained import PretrainedMixin
from mvq.core.tokens import mask_to_tokens
from mvq.priors.common import PRIORS, PriorLayout, check_batch, nll_logs


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, each ``(B, heads, T_max, head_dim)``."""

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def batch_size(self) -> int:
        """B the cache was allocated for."""
        return self.keys[0].shape[0]

    @property
    def max_len(self) -> int:
        """T_max, the longest sequence the cache holds."""
        return self.keys[0].shape[2]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; causal or bidirectional."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, pos: int = 0) -> Tensor:
        """Attend ``x`` (B, T, C) at positions ``pos..pos+T-1``; ``kv`` is a layer's cache."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hd)
        mask, is_causal = None, self.causal and T > 1
        if kv is not None:
            end = pos + T
            kv[0][:, :, pos:end] = k
            kv[1][:, :, pos:end] = v
            k, v = kv[0][:, :, :end], kv[1][:, :, :end]  # (B, nh, pos+T, hd)
            if is_causal and pos > 0:  # queries are the last T of pos+T keys
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(pos)
                is_causal = False
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, mask, drop, is_causal)  # (B, nh, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0, causal: bool = True
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, pos: int = 0) -> Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        x = x + self.attn(self.ln1(x), kv, pos)
        return x + self.mlp(self.ln2(x))


def init_gpt_weights(model: nn.Module, layers: int) -> None:
    """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled 1/sqrt(2L)."""
    for name, p in model.named_parameters():
        if p.dim() < 2:
            nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
        elif name.endswith(("attn.proj.weight", "mlp.2.weight")):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))
        else:
            nn.init.normal_(p, std=0.02)


class CausalTransformer(nn.Module):
    """A GPT decoder: token ids ``(B, T)`` in ``[0, vocab_in)`` -> logits over ``vocab_out``."""

    def __init__(
        self,
        vocab_in: int,
        vocab_out: int,
        block_size: int,
        layers: int,
        heads: int,
        dim: int,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.block_size, self.heads, self.dim = block_size, heads, dim
        self.tok_emb = nn.Embedding(vocab_in, dim)
        self.pos_emb = nn.Embedding(block_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_out)
        init_gpt_weights(self, layers)

    def forward(
        self, idx: Tensor, cache: KVCache | None = None, pos: int = 0, last_only: bool = False
    ) -> Tensor:
        """Logits ``(B, T, vocab_out)`` (``(B, 1, vocab_out)`` with ``last_only``).

        Args:
            idx: ``(B, T)`` token ids at positions ``pos..pos+T-1``.
            cache: a ``new_cache`` whose first ``pos`` positions hold the prefix; the new keys
                and values are written into it. Without a cache ``pos`` must be 0.
            pos: position of ``idx[:, 0]``.
            last_only: apply the output head to the last position only (sampling).
        """
        B, T = idx.shape
        limit = self.block_size if cache is None else min(self.block_size, cache.max_len)
        if pos + T > limit or (cache is None and pos):
            raise ValueError(
                f"positions {pos}..{pos + T - 1} do not fit (block size {self.block_size}, "
                f"cache {None if cache is None else cache.max_len}); pos > 0 needs a cache"
            )
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"the cache holds {cache.batch_size} sequences, the batch has {B}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[pos : pos + T])  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.keys[i], cache.values[i]), pos)
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_f(x))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Keys/values ``(B, heads, T_max, head_dim)`` per layer on the model's device/dtype.

        Left uninitialised: attention only reads positions that ``forward`` has written.
        """
        w = self.pos_emb.weight
        shape = (batch_size, self.heads, max_len or self.block_size, self.dim // self.heads)
        n = len(self.blocks)
        new = lambda: torch.empty(shape, device=w.device, dtype=w.dtype)  # noqa: E731
        return KVCache([new() for _ in range(n)], [new() for _ in range(n)])


@dataclass
class TransformerPriorConfig(PriorLayout):
    """Token layout (see ``PriorLayout``) and the sizes of the two decoders (Table 4)."""

    primary_layers: int = 4
    primary_heads: int = 4
    primary_dim: int = 64
    secondary_layers: int = 4
    secondary_heads: int = 4
    secondary_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0


class TransformerPrior(nn.Module, PretrainedMixin):
    """Primary causal transformer + secondary causal transformer conditioned on the primary."""

    config_class = TransformerPriorConfig

    def __init__(self, config: TransformerPriorConfig) -> None:
        super().__init__()
        self.config = c = config
        starts = max(c.num_classes, 1)  # one start token, or one class token per class
        self.primary = CausalTransformer(
            c.primary_vocab + starts,
            c.primary_vocab,
            c.primary_len,
            c.primary_layers,
            c.primary_heads,
            c.primary_dim,
            c.mlp_ratio,
            c.dropout,
        )
        self.secondary = None
        if c.has_secondary:  # input ids: primary, secondary, mask values, then start tokens
            self.secondary = CausalTransformer(
                c.primary_vocab + c.secondary_vocab + c.mask_vocab + starts,
                c.secondary_vocab + c.mask_vocab,
                c.primary_len + c.secondary_len + c.mask_len,
                c.secondary_layers,
                c.secondary_heads,
                c.secondary_dim,
                c.mlp_ratio,
                c.dropout,
            )

    def start_tokens(self, labels: Tensor | None, batch_size: int, stream: str) -> Tensor:
        """The first input ``(B, 1)`` of the ``"primary"`` or ``"secondary"`` decoder."""
        c = self.config
        offset = c.primary_vocab + (
            c.secondary_vocab + c.mask_vocab if stream == "secondary" else 0
        )
        device = self.primary.pos_emb.weight.device
        if labels is None:
            return torch.full((batch_size, 1), offset, dtype=torch.long, device=device)
        return (labels.to(device) + offset).view(batch_size, 1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Teacher-forced logits: primary ``(B, S, K1)``, secondary ``(B, S', K2)`` or None,
        mask ``(B, M, 2**b)`` or None (None unless ``model_mask``)."""
        primary, secondary, labels, mask = check_batch(batch, self.config)
        c = self.config
        B, S, S2 = primary.shape[0], c.primary_len, c.secondary_len
        x = primary.reshape(B, S)  # (B, h, w) -> (B, S), raster order
        start = self.start_tokens(labels, B, "primary")
        logits_p = self.primary(torch.cat([start, x[:, :-1]], 1))  # (B, S, K1)
        if self.secondary is None or secondary is None:
            return logits_p, None, None
        s = secondary.reshape(B, -1) + c.primary_vocab  # (B, S')
        seq = [self.start_tokens(labels, B, "secondary"), x, s]
        if mask is not None:
            seq.append(mask + c.primary_vocab + c.secondary_vocab)  # (B, M)
        logits = self.secondary(torch.cat(seq, 1)[:, :-1])[:, S:]  # (B, S' + M, K2 + 2**b)
        if mask is None:
            return logits_p, logits, None
        return logits_p, logits[:, :S2, : c.secondary_vocab], logits[:, S2:, c.secondary_vocab :]

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean cross-entropy in nats per token over all modelled tokens (see ``nll_logs``)."""
        logits_p, logits_s, logits_m = self(batch)
        B = logits_p.shape[0]
        ce_p = F.cross_entropy(
            logits_p.transpose(1, 2), batch["primary"].reshape(B, -1).long(), reduction="none"
        )  # (B, S)
        ce_s = ce_m = None
        if logits_s is not None:
            target = batch["secondary"].reshape(B, -1).long()
            ce_s = F.cross_entropy(logits_s.transpose(1, 2), target, reduction="none")  # (B, S')
        if logits_m is not None:
            c = self.config
            packed = batch["mask"].to(torch.uint8)
            target = mask_to_tokens(packed, c.mask_bits, c.mask_token_width)  # (B, M)
            ce_m = F.cross_entropy(logits_m.transpose(1, 2), target, reduction="none")  # (B, M)
        return nll_logs(ce_p, ce_s, ce_m)


def _table4(primary: tuple[int, int, int], secondary: tuple[int, int, int], grid: int, **kw):
    """A ``TransformerPrior`` with Table 4's (layers, heads, units) and K = 128 + 128."""
    (pl, ph, pd), (sl, sh, sd) = primary, secondary
    values = dict(
        primary_vocab=128,
        primary_grid=(grid, grid),
        secondary_vocab=128,
        secondary_grid=(1, 1),
        primary_layers=pl,
        primary_heads=ph,
        primary_dim=pd,
        secondary_layers=sl,
        secondary_heads=sh,
        secondary_dim=sd,
    )
    return TransformerPrior(TransformerPriorConfig(**{**values, **kw}))


@PRIORS.register("transformer_1p1", TransformerPrior)
def transformer_1p1(**overrides) -> TransformerPrior:
    """Table 4, 1 + 1 tokens: primary 4 layers / 4 heads / 64 units, secondary 4/4/64."""
    return _table4((4, 4, 64), (4, 4, 64), 1, **overrides)


@PRIORS.register("transformer_4p1", TransformerPrior)
def transformer_4p1(**overrides) -> TransformerPrior:
    """Table 4, 4 + 1 tokens: primary 8 layers / 8 heads / 128 units, secondary 4/4/128."""
    return _table4((8, 8, 128), (4, 4, 128), 2, **overrides)


@PRIORS.register("transformer_16p1", TransformerPrior)
def transformer_16p1(**overrides) -> TransformerPrior:
    """Table 4, 16 + 1 tokens: primary 12 layers / 8 heads / 256 units, secondary 4/4/256."""
    return _table4((12, 8, 256), (4, 4, 256), 4, **overrides)
