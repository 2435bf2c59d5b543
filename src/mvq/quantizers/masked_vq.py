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

The default search (``"chunked"``) is exact: it returns the reference's winners. When f exposes
``affine_ends`` (Table 3's f and the default MLP do), a first pass scores every mask without
building any hypothesis: f's first layer is linear in the mask, and its last layer is linear,
so the error is a norm in f's last hidden space (16-dim for D = 16, whatever the grid). The k
best masks per instance (``MaskedVectorQuantizer.rescore``) are then scored again with the
reference's arithmetic (``e + f(e' * m)`` against y), and the winner is the best of those. When
an instance's first-pass runner-up is not clear of that best by 4x the first pass's observed
error plus 1e-5 relative, its 4k best masks are scored exactly, then 16k, up to all J, so a
first pass in lower precision (``"chunked_bf16"``: f's matrix products in bf16, worth it on
CPUs with AMX and on GPUs) still returns the reference's winner; ties go to the lowest mask
index, as in the reference.

At generation time the mask is not modelled: ``decode`` draws it from Bernoulli(mask_prob).

**Mask codebook** (``mask_source="codebook"``, not in the paper): the J candidate masks are one
fixed list of J Bernoulli(mask_prob) patterns, drawn once from a ``torch.Generator`` seeded with
``mask_codebook_seed`` (``draw_mask_codebook``), the same list at training, encoding, decoding
and in the prior. The search runs over that list, and the token is the winner's index: log2 J
bits instead of D' (J must be a power of 2). A decode without a mask draws an index uniformly.
The list is a buffer (saved with the weights) and is checked against the seed on loading.

**Codebooks**: ``quantizers=(primary, secondary)`` replaces the two ``VectorQuantizer`` s by
any quantizers of the same interface, e.g. two ``FSQ`` s (Masked FSQ, ``MFSQVAE``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvq.core.tokens import (
    Tokens,
    mask_bytes_to_index,
    mask_index_to_bytes,
    pack_masks,
    unpack_masks,
)
from mvq.nets.table3 import trunk_math
from mvq.quantizers.base import (
    QuantizerOutput,
    check_feature_map,
    codebook_stats,
    to_channel_first,
    to_channel_last,
)
from mvq.quantizers.mh_search import AffineEnds, affine_ends, compile_once
from mvq.quantizers.vq import ChannelProjection, VectorQuantizer

SEARCHES = ("chunked", "chunked_bf16", "all_in_graph")
CHUNK_ROWS, COMPILED_CHUNK_ROWS = 4096, 8192  # search_chunk's defaults: eager, compiled
MASK_MODES = ("per_instance", "per_code", "shared")
MASK_SOURCES = ("random", "codebook")


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

    def affine_ends(self, dtype: torch.dtype | None = None, compiled: bool = False) -> AffineEnds:
        """f on 1x1 codes as ``AffineEnds`` (first and last layers are linear); fp32 and eager
        only (``dtype`` and ``compiled`` are accepted and ignored)."""
        first, last = self.first, self.last
        return AffineEnds(
            first.weight, first.bias, self.body, last.weight, last.bias, torch.float32
        )


def check_per_sample(f: nn.Module) -> None:
    """f must treat every hypothesis independently: no BatchNorm, no dropout."""
    for name, m in f.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd):
            raise ValueError(
                f"f contains {type(m).__name__} at '{name or 'f'}': MH-Dropout needs each "
                "hypothesis to depend on its own mask only; use GroupNorm/LayerNorm and no dropout"
            )


def draw_mask_codebook(num: int, dim: int, prob: float, seed: int) -> Tensor:
    """The mask codebook: ``num`` Bernoulli(``prob``) patterns ``(J, D')`` bool, drawn on the CPU
    from a ``torch.Generator`` seeded with ``seed`` (the same list on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, dim, generator=generator) < prob


@dataclass(frozen=True)
class MHDropoutConfig:
    """Multiple-Hypotheses Dropout: how the J candidate masks are drawn and how the winner is
    found. One object, passed whole to ``MaskedVectorQuantizer`` (``mh=``); tokenizer configs
    keep these fields flat (their saved ``config.json``) and hand them over with
    ``MVQVAEConfig.mh_dropout``.

    Attributes:
        num_hypotheses: J, masks sampled per instance per forward pass (Fig. 5: 16-2048).
        mask_prob: probability that a mask bit is 1 (Bernoulli(0.5) in the paper).
        mask_mode: how the J candidate masks are drawn, always i.i.d. Bernoulli(mask_prob):
            ``"per_instance"`` (authors' code: each instance its own J), ``"per_code"`` (each
            distinct secondary code its own J, shared by the instances quantised to it: every
            instance still sees J i.i.d. masks, and f runs once per code and mask) or
            ``"shared"`` (one set of J for the whole batch). With ``mask_source="codebook"``
            every instance searches the same J masks: the modes then differ only in how f's
            work is grouped, not in the winners.
        mask_source: ``"random"`` (the paper: J fresh Bernoulli masks per pass; the token is
            the winner's D' bits) or ``"codebook"`` (J fixed masks drawn once from
            ``mask_codebook_seed``; the token is the winner's index, log2 J bits; J a power
            of 2).
        mask_codebook_seed: seed of the mask codebook (``"codebook"`` only, required there).
        search: ``"chunked"`` (no-grad search, winner recomputed), ``"chunked_bf16"`` (the
            same with a bfloat16 first pass, same winners) or ``"all_in_graph"`` (reference;
            memory grows with J).
        search_chunk: rows of f evaluated at once by the chunked search (default 4096, and
            8192 for a compiled first pass, whose fused kernels keep fewer rows alive).
        compile_search: run the first pass's f through ``torch.compile`` (Table 3's f; needs a
            C++ compiler on CPUs; the first search compiles for seconds). Same winners.
        normalize_secondary: GroupNorm(1) on e' before masking (authors' later code; off:
            SPEC's stable setting).
    """

    num_hypotheses: int = 256
    mask_prob: float = 0.5
    mask_mode: str = "per_instance"
    mask_source: str = "random"
    mask_codebook_seed: int | None = None
    search: str = "chunked"
    search_chunk: int | None = None
    compile_search: bool = False
    normalize_secondary: bool = False


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
        mh: MH-Dropout's options (``MHDropoutConfig``: J, mask probability, mode and source,
            the search); ``**mh_options`` (e.g. ``num_hypotheses=64``) replace its fields.
        in_channels, secondary_in_channels: input channels, projected to D / D' when different.
        vq_kwargs: options for both ``VectorQuantizer`` s (beta, ema, init, dead codes, ...).
        quantizers: ``(primary, secondary)`` quantizers to use instead of the two
            ``VectorQuantizer`` s (e.g. ``FSQ`` s): channel-first ``(B, D, ...)`` /
            ``(B, D', ...)`` in, ``QuantizerOutput`` out, ``decode(indices)`` back to
            ``quantized``, and ``codebook_size`` equal to ``codebook_size`` /
            ``secondary_codebook_size``; no ``vq_kwargs`` then.

    Shapes: ``forward(z, z2)`` with ``z`` ``(B, C, h, w)`` and ``z2`` ``(B, C', h', w')`` returns
    ``quantized`` ``(B, C, h, w)`` and tokens: ``indices`` ``(B, h, w)``, ``secondary``
    ``(B, h', w')``, ``mask`` ``(B, ceil(mask_bits/8))`` uint8 (``mask_bits``: D', or log2 J
    with a mask codebook).
    """

    rescore: int = 8  # masks per instance the chunked search re-scores exactly (k)
    rescore_bf16: int = 32  # k after a bf16 first pass: its error band holds ~10-40 masks at J 2048

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        secondary_dim: int | None = None,
        secondary_codebook_size: int | None = None,
        f: nn.Module | None = None,
        grid: tuple[int, int] = (1, 1),
        mh: MHDropoutConfig | None = None,
        in_channels: int | None = None,
        secondary_in_channels: int | None = None,
        vq_kwargs: dict | None = None,
        quantizers: tuple[nn.Module, nn.Module] | None = None,
        **mh_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(mh_options) - {f.name for f in dataclasses.fields(MHDropoutConfig)})
        if unknown:
            raise TypeError(
                f"MaskedVectorQuantizer got unexpected option(s) {', '.join(unknown)}; "
                "MH-Dropout's are the fields of MHDropoutConfig"
            )
        mh = dataclasses.replace(mh or MHDropoutConfig(), **mh_options)
        d2 = secondary_dim or dim
        _check_options(
            d2, mh.num_hypotheses, mh.mask_prob, mh.search, mh.search_chunk, mh.mask_mode
        )
        check_mask_source(mh.mask_source, mh.mask_codebook_seed, mh.num_hypotheses)
        self.mh = mh
        self.mask_source, self.mask_codebook_seed = mh.mask_source, mh.mask_codebook_seed
        self.dim, self.secondary_dim = dim, d2
        self.num_hypotheses, self.mask_prob = mh.num_hypotheses, mh.mask_prob
        self.mask_mode, self.search, self.search_chunk = mh.mask_mode, mh.search, mh.search_chunk
        self.compile_search = mh.compile_search
        self.in_channels = in_channels or dim
        self.secondary_in_channels = secondary_in_channels or d2
        self.project_in = ChannelProjection(self.in_channels, dim)
        self.project_in_secondary = ChannelProjection(self.secondary_in_channels, d2)
        self.project_out = ChannelProjection(dim, self.in_channels)
        sizes = (codebook_size, secondary_codebook_size or codebook_size)
        if quantizers is None:
            kw = vq_kwargs or {}
            self.primary = VectorQuantizer(sizes[0], dim, **kw)
            self.secondary = VectorQuantizer(sizes[1], d2, **kw)
        else:
            self.primary, self.secondary = _check_quantizers(quantizers, sizes, vq_kwargs)
        self.f = f if f is not None else MLPMHNetwork(d2, dim, grid)
        check_per_sample(self.f)
        self.norm = nn.GroupNorm(1, d2) if mh.normalize_secondary else nn.Identity()
        if mh.mask_source == "codebook":  # (J, D') bool, saved with the weights
            masks = draw_mask_codebook(mh.num_hypotheses, d2, mh.mask_prob, mh.mask_codebook_seed)
            self.register_buffer("mask_codebook", masks)

    # -- public API -------------------------------------------------------------------------
    def forward(
        self, z: Tensor, z_secondary: Tensor, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        """Quantise both inputs, search J masks per instance, return the winning hypothesis.

        ``generator`` (on the device of ``z``) draws the random candidate masks; None: the
        global RNG (training). A mask codebook draws nothing.
        """
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
        inverse = self.mask_groups(s.indices)  # (B,) group of each instance, or None
        groups = z.shape[0] if inverse is None else int(inverse.max()) + 1
        masks = self.candidate_masks(groups, z.device, generator)  # (G, J, D')
        group = torch.arange(z.shape[0], device=z.device) if inverse is None else inverse  # (B,)
        if self.search == "all_in_graph":
            y_hat, mhd, winner, stats = wta_all_in_graph(self.f, p.quantized, code, y, masks[group])
            chosen = masks[group, winner]  # (B, D')
        else:
            winner, stats = self.search_winner(
                p.quantized.detach(), code.detach(), y, masks, inverse
            )
            chosen = masks[group, winner]  # (B, D'), without a (B, J, D') copy of the masks
            y_hat = p.quantized + self._f(code * _bcast(chosen), y)  # the winner, with autograd
            mhd = F.mse_loss(y_hat, y)
        quantized = to_channel_first(self.project_out(to_channel_last(y_hat)))
        tokens = Tokens(p.indices, s.indices, self._mask_token(winner, chosen))
        logs = {
            **{f"primary_{k}": v for k, v in p.logs.items()},
            **{f"secondary_{k}": v for k, v in s.logs.items()},
            "usage": p.logs["usage"],
            "mhd": mhd.detach(),
            "mhd_mean_hypothesis": stats,
            "mask_density": chosen.float().mean(),
            "y_rms": y.detach().pow(2).mean().sqrt(),
        }
        if self.mask_source == "codebook":  # how much of the list the winners use
            logs |= {f"mask_{k}": v for k, v in codebook_stats(winner, self.num_hypotheses).items()}
        return QuantizerOutput(quantized, tokens, p.loss + s.loss + mhd, logs)

    @torch.no_grad()
    def encode(
        self, z: Tensor, z_secondary: Tensor, generator: torch.Generator | None = None
    ) -> Tokens:
        """Tokens (indices, secondary indices, best-of-J mask); random candidate masks come
        from ``generator`` (None: the global RNG), a mask codebook needs none."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, z_secondary, generator).tokens
        finally:
            self.train(was_training)

    def decode(self, tokens: Tokens, generator: torch.Generator | None = None) -> Tensor:
        """``e + f(e' * m)`` ``(B, C, h, w)`` from tokens; a missing mask is drawn: from
        Bernoulli(mask_prob), or uniformly from the mask codebook.

        ``generator`` (on the decode device) makes the drawn masks reproducible.
        """
        if tokens.secondary is None:
            raise ValueError("MVQ tokens need secondary indices (tokens.secondary is None)")
        e = self.primary.decode(tokens.indices)  # (B, D, h, w)
        code = self.norm(self.secondary.decode(tokens.secondary))  # (B, D', h', w')
        b, device = code.shape[0], code.device
        if tokens.mask is not None:
            mask = self.mask_patterns(tokens.mask.to(device))
        elif self.mask_source == "codebook":  # generation: an index uniformly from the list
            index = torch.randint(self.num_hypotheses, (b,), generator=generator, device=device)
            mask = self.mask_codebook[index]  # (B, D')
        else:  # generation: the mask is not modelled, draw one
            rand = torch.rand(b, self.secondary_dim, generator=generator, device=device)
            mask = rand < self.mask_prob
        y_hat = e + self._f(code * _bcast(mask), e)
        return to_channel_first(self.project_out(to_channel_last(y_hat)))

    def mask_patterns(self, packed: Tensor) -> Tensor:
        """The masks ``(B, D')`` bool of the tokens' packed masks ``(B, ceil(mask_bits/8))``:
        unpacked bits, or the mask codebook's entries at the packed indices."""
        if self.mask_source == "codebook":
            return self.mask_codebook[mask_bytes_to_index(packed, self.mask_bits)]
        return unpack_masks(packed, self.secondary_dim)

    def candidate_masks(
        self, groups: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """The J masks ``(G, J, D')`` bool a pass searches: fresh Bernoulli draws
        (``sample_masks``), or the mask codebook for every group."""
        if self.mask_source == "codebook":
            return self.mask_codebook.to(device).expand(groups, -1, -1)
        return self.sample_masks(groups, self.num_hypotheses, device, generator)

    def mask_groups(self, secondary_indices: Tensor) -> Tensor | None:
        """Group of each instance for mask sampling: None (one group each, "per_instance")
        or ``(B,)`` ids of the distinct secondary codes ("per_code", "shared")."""
        if self.mask_mode == "per_instance":
            return None
        return torch.unique(secondary_indices.flatten(1), dim=0, return_inverse=True)[1]

    def sample_masks(
        self, groups: int, num: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """Bernoulli(mask_prob) masks ``(G, J, D')`` bool ("shared": one draw expanded), drawn
        from ``generator`` (on ``device``; None: the global RNG)."""
        rows = 1 if self.mask_mode == "shared" else groups
        rand = torch.rand(rows, num, self.secondary_dim, generator=generator, device=device)
        masks = rand < self.mask_prob
        return masks.expand(groups, -1, -1)

    @property
    def mask_bits(self) -> int:
        """Bits of the mask in the tokens: D', or log2 J with a mask codebook."""
        if self.mask_source == "codebook":
            return self.num_hypotheses.bit_length() - 1
        return self.secondary_dim

    @property
    def mask_codebook_size(self) -> int:
        """J with a mask codebook, else 0 (as ``TokenLayout.mask_codebook_size``)."""
        return self.num_hypotheses if self.mask_source == "codebook" else 0

    @property
    def mask_bytes(self) -> int:
        """Bytes per instance of a packed mask."""
        return (self.mask_bits + 7) // 8

    def _mask_token(self, winner: Tensor, chosen: Tensor) -> Tensor:
        """The packed mask of the tokens ``(B, mask_bytes)``: the chosen masks' bits ``(B, D')``,
        or with a mask codebook the winners' indices ``(B,)``."""
        if self.mask_source == "codebook":
            return mask_index_to_bytes(winner, self.mask_bits)
        return pack_masks(chosen)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Refuse a saved mask codebook that is not the list the seed draws."""
        saved = state_dict.get(prefix + "mask_codebook")
        if self.mask_source == "codebook" and saved is not None:
            ours = self.mask_codebook
            if saved.shape != ours.shape or not torch.equal(saved.cpu().bool(), ours.cpu()):
                raise ValueError(
                    f"the saved mask codebook is not the {self.num_hypotheses} masks that seed "
                    f"{self.mask_codebook_seed} draws (mask_prob {self.mask_prob}, D' "
                    f"{self.secondary_dim}): load it with the config it was saved with"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- MH-Dropout search ------------------------------------------------------------------
    @torch.no_grad()
    def search_winner(
        self, e: Tensor, code: Tensor, y: Tensor, masks: Tensor, inverse: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Index of the best of J masks per instance, without autograd.

        Args: e ``(B, D, h, w)``, code ``(B, D', h', w')``, y ``(B, D, h, w)``, masks
        ``(G, J, D')`` and ``inverse`` ``(B,)`` the group of each instance (None: G = B, one
        group each); a group's instances share its code, so f runs once per group and mask.
        Returns winners ``(B,)`` and the mean hypothesis error (a log).

        When f has ``affine_ends`` (Table 3's f, the default MLP) and codes are 1x1, a first
        pass scores all J masks in f's last hidden space (``_trunk_scores``), the ``rescore``
        best are scored again exactly as the reference does, and an instance whose runner-up
        score is not clear of the exact best by a margin (``_uncertain``) is scored again on
        4x as many of its best masks, and so on up to all J (a bf16 first pass starts from
        ``rescore_bf16``). Otherwise every mask is scored exactly. Runs in fp32 under any
        autocast.
        """
        with torch.autocast(e.device.type, enabled=False):
            return self._search(e.float(), code.float(), y.float(), masks, inverse)

    def _search(
        self, e: Tensor, code: Tensor, y: Tensor, masks: Tensor, inverse: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``search_winner`` in fp32."""
        b, j = e.shape[0], masks.shape[1]
        group = torch.arange(b, device=e.device) if inverse is None else inverse  # (B,)
        ends = None
        if code.shape[-2:] == (1, 1) and j > self.rescore:
            dtype = torch.bfloat16 if self.search == "chunked_bf16" else None
            ends = affine_ends(self.f, dtype, compiled=self.compile_search)
        if ends is None:  # f not affine at both ends (as far as mvq knows), or nothing to gain
            err = self._exact_scores(e, code, y, masks, inverse)  # (B, J)
            return err.argmin(1), err.mean()
        approx, mean_err = self._trunk_scores(e, code, y, masks, inverse, ends)  # (B, J)
        winner = torch.empty(b, dtype=torch.long, device=e.device)
        k = self.rescore_bf16 if self.search == "chunked_bf16" else self.rescore
        todo = torch.arange(b, device=e.device)  # instances still unsure of their winner
        while todo.numel():
            if k >= j:  # the first pass did not separate these: score all J exactly
                err = self._exact_scores(e[todo], code[todo], y[todo], masks[group[todo]])
                winner[todo] = err.argmin(1)  # (R, J) -> (R,)
                break
            a = approx[todo]  # (R, J)
            top = a.topk(k + 1, dim=1, largest=False, sorted=True)
            cand = top.indices[:, :-1].sort(1).values  # (R, k); ties go to the first j
            exact = self._exact_scores(e[todo], code[todo], y[todo], masks[group[todo, None], cand])
            best, arg = exact.min(1)
            winner[todo] = cand.gather(1, arg[:, None]).squeeze(1)
            unsure = self._uncertain(a.gather(1, cand), exact, top.values[:, -1], best)
            todo, k = todo[unsure], 4 * k  # the unsure ones again, with 4x the candidates
        return winner, mean_err

    def _exact_scores(
        self, e: Tensor, code: Tensor, y: Tensor, masks: Tensor, inverse: Tensor | None = None
    ) -> Tensor:
        """``mse(e + f(e' * m), y)`` for every instance and mask ``(B, J)``, in chunks of f
        rows: the reference's arithmetic. Arguments as in ``search_winner``."""
        b, (g, j) = e.shape[0], masks.shape[:2]
        code = code if inverse is None else code[_first_of_groups(inverse, g)]  # (G, D', h', w')
        step = max(1, (self.search_chunk or CHUNK_ROWS) // g)
        err = torch.empty(b, j, device=y.device)
        for j0 in range(0, j, step):
            c = code.unsqueeze(1) * _bcast(masks[:, j0 : j0 + step])  # (G, Jc, D', h', w')
            out = self._f(c.flatten(0, 1), y).unflatten(0, (g, -1))  # (G, Jc, D, h, w)
            if inverse is not None:
                out = out[inverse]  # (B, Jc, D, h, w)
            diff = e.unsqueeze(1) + out - y.unsqueeze(1)
            err[:, j0 : j0 + step] = diff.float().pow(2).flatten(2).mean(-1)
        return err

    def _trunk_scores(
        self,
        e: Tensor,
        code: Tensor,
        y: Tensor,
        masks: Tensor,
        inverse: Tensor | None,
        ends: AffineEnds,
    ) -> tuple[Tensor, Tensor]:
        """First pass: the errors ``(B, J)`` via f's affine ends ``ends``, and their mean.

        The first layer on ``e' * m`` is ``m @ (W diag e').T + b``: one small product per group.
        The last layer is linear, ``out = A u + a``: with ``A = Q R`` (reduced QR, Q
        orthonormal) and ``s = a + e - y``, ``||A u + s||^2 = ||R u + Q^T s||^2 + ||s_perp||^2``,
        so no (B, J, D, h, w) hypothesis is ever built. Same maths as ``_exact_scores``,
        different rounding: the winner is re-checked exactly.
        """
        b, (g, j), (h, w) = e.shape[0], masks.shape[:2], y.shape[-2:]
        code = code if inverse is None else code[_first_of_groups(inverse, g)]  # (G, D', 1, 1)
        first = code.flatten(1)[:, :, None] * ends.in_weight.t()  # (G, D', C): W diag(e')
        first = torch.cat([first, ends.in_bias.expand(g, 1, -1)], 1).to(ends.dtype)  # (G, D'+1, C)
        out_w, out_b = ends.out_weight, ends.out_bias
        if out_w.shape[0] * h * w == e[0].numel():  # 1x1 output broadcast over the grid
            out_w, out_b = out_w.repeat_interleave(h * w, 0), out_b.repeat_interleave(h * w)
        if out_w.shape[0] != e[0].numel():
            raise ValueError(
                f"f's affine_ends emit {out_w.shape[0]} values per code, the primary grid "
                f"holds {e[0].numel()}: build f for this grid"
            )
        s = out_b + (e - y).flatten(1)  # (B, Q)
        if out_w.shape[0] > out_w.shape[1]:  # Q > P: work in the P-dim range of A
            q, r = torch.linalg.qr(out_w)  # (Q, P), (P, P)
            t = s @ q  # (B, P)
            rest = (s - t @ q.t()).pow(2).sum(1)  # (B,) ||s_perp||^2, the same for every mask
        else:
            r, t, rest = out_w, s, s.new_zeros(b)
        rows = self.search_chunk or (COMPILED_CHUNK_ROWS if self.compile_search else CHUNK_ROWS)
        step = max(1, rows // g)
        err = torch.empty(b, j, device=y.device)
        if ends.trunk_args is not None and inverse is None:  # a compiled Table 3 trunk
            score = compile_once(chunk_errors)  # one fused graph per chunk: masks -> errors
            for j0 in range(0, j, step):
                err[:, j0 : j0 + step] = score(
                    masks[:, j0 : j0 + step], first, r, t, *ends.trunk_args
                )
            err = (err + rest[:, None]) / e[0].numel()
            return err, err.mean()
        # masks next to a column of ones (the bias rides in the bmm); buffers reused by chunks
        m = torch.ones(g, step, masks.shape[2] + 1, device=y.device, dtype=ends.dtype)
        hid = torch.empty(g, step, first.shape[2], device=y.device, dtype=ends.dtype)
        for j0 in range(0, j, step):
            jc = min(step, j - j0)
            m[:, :jc, :-1] = masks[:, j0 : j0 + jc]
            out = torch.bmm(m[:, :jc], first, out=hid if jc == step else None)  # (G, Jc, C)
            u = ends.trunk(out.flatten(0, 1)).float()  # (G * Jc, P)
            z = (u @ r.t()).unflatten(0, (g, -1))  # (G, Jc, P) or (G, Jc, Q)
            z = (z if inverse is None else z[inverse]) + t[:, None]  # (B, Jc, .)
            err[:, j0 : j0 + step] = z.pow_(2).sum(-1)
        err = (err + rest[:, None]) / e[0].numel()
        return err, err.mean()

    @staticmethod
    def _uncertain(approx: Tensor, exact: Tensor, runner_up: Tensor, best: Tensor) -> Tensor:
        """Instances ``(B,)`` whose unscored masks might beat ``best``: a mask left out scored
        at least ``runner_up`` in the first pass, whose error on the k rescored masks was at
        most ``slack``; ask for 4x that slack plus 1e-5 relative as margin."""
        slack = (approx - exact).abs().amax(1)  # (B,)
        return runner_up - 4 * slack - 1e-5 * best.abs() <= best

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


def chunk_errors(masks: Tensor, first: Tensor, r: Tensor, t: Tensor, *trunk_args) -> Tensor:
    """First-pass errors ``(B, Jc)`` of a chunk of per-instance masks ``(B, Jc, D')``, as one
    function for ``torch.compile``: ``first`` ``(B, D' + 1, C)`` (bias last), f's trunk as
    ``trunk_math(h, *trunk_args)``, then ``||u R^T + t||^2`` with ``r`` ``(P, P)`` and ``t``
    ``(B, P)`` (see ``_trunk_scores``)."""
    h = torch.baddbmm(first[:, -1:], masks.to(first.dtype), first[:, :-1])  # (B, Jc, C)
    u = trunk_math(h.flatten(0, 1), *trunk_args)  # (B * Jc, P)
    z = (u @ r.t()).unflatten(0, (masks.shape[0], -1)) + t[:, None]  # (B, Jc, P)
    return z.pow(2).sum(-1)


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


def _first_of_groups(inverse: Tensor, groups: int) -> Tensor:
    """Index of the first instance of each group ``(G,)``, given each instance's group."""
    b = inverse.shape[0]
    first = torch.full((groups,), b, device=inverse.device)
    return first.scatter_reduce(0, inverse, torch.arange(b, device=inverse.device), "amin")


def _bcast(m: Tensor) -> Tensor:
    """Masks ``(..., D')`` -> ``(..., D', 1, 1)`` float, to multiply a code map."""
    return m[..., None, None].float()


def check_mask_source(source: str, seed: int | None, j: int) -> None:
    """One-line ``ValueError`` for a bad ``mask_source`` / ``mask_codebook_seed`` / J."""
    if source not in MASK_SOURCES:
        raise ValueError(f"unknown mask_source '{source}'; choose one of {', '.join(MASK_SOURCES)}")
    if source == "random":
        if seed is not None:
            raise ValueError(
                f"mask_codebook_seed={seed} is only used with mask_source='codebook': set "
                "mask_source='codebook' or leave mask_codebook_seed unset"
            )
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"mask_source='codebook' needs mask_codebook_seed, a non-negative integer (the seed "
            f"of the list of masks), got {seed!r}"
        )
    if isinstance(j, int) and (j < 2 or j & (j - 1)):
        raise ValueError(
            f"a mask codebook needs num_hypotheses J a power of 2 >= 2 (its index is log2 J "
            f"bits), got J={j}: pick e.g. {max(2, 1 << max(j, 1).bit_length() - 1)}"
        )


def _check_quantizers(
    quantizers: tuple[nn.Module, nn.Module], sizes: tuple[int, int], vq_kwargs: dict | None
) -> tuple[nn.Module, nn.Module]:
    """The given (primary, secondary) quantizers, or one-line errors when they do not fit."""
    if vq_kwargs:
        raise ValueError(
            "vq_kwargs configure the built-in VectorQuantizers: leave them out when passing "
            "quantizers"
        )
    if not isinstance(quantizers, tuple | list) or len(quantizers) != 2:
        raise ValueError("quantizers must be a pair (primary, secondary) of quantizer modules")
    for name, q, size in zip(("primary", "secondary"), quantizers, sizes, strict=True):
        if getattr(q, "codebook_size", None) != size:
            raise ValueError(
                f"the {name} quantizer has {getattr(q, 'codebook_size', None)} codes but "
                f"{'codebook_size' if name == 'primary' else 'secondary_codebook_size'}={size}: "
                "pass its codebook_size"
            )
    return quantizers[0], quantizers[1]


def _check_options(d2: int, j: int, p: float, search: str, chunk: int | None, mode: str) -> None:
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask_mode '{mode}'; choose one of {', '.join(MASK_MODES)}")
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
    if chunk is not None and chunk < 1:
        raise ValueError(f"search_chunk must be >= 1 (or None for the default), got {chunk}")
