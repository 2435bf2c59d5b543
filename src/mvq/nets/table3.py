"""The networks of the MVQ paper's Table 3: encoders E, E', decoder D and the MH network f.

All follow VQ-VAE-2 (Razavi et al., 2019): 128 channels, two residual blocks (kernels 3, 1;
64 channels). E, E' and D put BatchNorm between layers (ReLU in the encoders, LeakyReLU with
PyTorch's default slope 0.01 in the decoders); f uses GroupNorm(1, C) instead (see
``MHNetwork``). Table 3 lists kernels per downsampling factor F but not strides or paddings;
they are derived here:

- encoders: stride 2 while the map is larger than the target, each time with the smallest
  padding giving ceil(n / 2); then stride 1 with "same" padding (even kernels pad (k-1)//2
  before and k//2 after, like PyTorch's ``padding="same"``). The listed kernels always reach
  the target exactly, so E' never needs a pooling layer.
- decoder: a stride-1 "same" conv with the first kernel, then transposed convs with the others,
  whose (stride, padding, output_padding) come from a small exhaustive search: sizes stay in
  [1, H], the output is exactly H, and among all such paths the one with the smallest total
  deviation from exact stride scaling |out - stride * n| wins (then the smallest paddings).

Derived arrangements (E, E': kernel/stride/padding, "s" = same; D: the stride-1 conv, then
each transposed conv as kernel/stride/padding/output_padding):

====  ==  ====  ===  =================================================
size  F   grid  net  layers
====  ==  ====  ===  =================================================
28    7   4     E    4/2/1 3/2/1 3/2/1 3/1/s
28    7   4     E'   4/2/1 3/2/1 3/1/s
28    7   4     D    3/1/s; 3/2/1/0 4/2/1/0 4/2/1/0
28    14  2     E    4/2/1 3/2/1 3/2/1 3/2/1 3/1/s
28    14  2     E'   4/2/1 3/1/s
28    14  2     D    2/1/s; 2/2/0/0 3/2/1/0 4/2/1/0 4/2/1/0
28    28  1     E    4/2/1 4/2/1 4/2/2 4/2/1 3/2/1
28    28  1     E'   4/1/s 3/1/s
28    28  1     D    1/1/s; 2/2/0/1 3/2/0/0 4/2/1/0 4/2/1/0
32    8   4     E    4/2/1 3/2/1 3/2/1 3/1/s
32    8   4     E'   4/2/1 3/2/1 3/1/s
32    8   4     D    3/1/s; 3/2/1/1 4/2/1/0 4/2/1/0
32    16  2     E    4/2/1 4/2/1 4/2/1 3/2/1 3/1/s
32    16  2     E'   4/2/1 3/1/s 3/1/s
32    16  2     D    3/1/s; 4/2/1/0 4/2/1/0 4/2/1/0 4/2/1/0
32    32  1     E    4/2/1 3/2/1 3/2/1 3/2/1 3/2/1 3/1/s
32    32  1     E'   4/1/s 3/1/s
32    32  1     D    2/1/s; 2/2/0/0 4/2/1/0 4/2/1/0 4/2/1/0 4/2/1/0
64    16  4     E    4/2/1 4/2/1 4/2/1 3/2/1 3/1/s
64    16  4     E'   4/2/1 3/2/1 3/1/s
64    16  4     D    3/1/s; 4/2/1/0 4/2/1/0 4/2/1/0 4/2/1/0
64    32  2     E    4/2/1 3/2/1 3/2/1 3/2/1 3/2/1 3/1/s
64    32  2     E'   4/2/1 3/1/s
64    32  2     D    2/1/s; 2/2/0/0 4/2/1/0 4/2/1/0 4/2/1/0 4/2/1/0
64    64  1     E    4/2/1 4/2/1 4/2/1 4/2/1 4/2/1 4/2/1
64    64  1     E'   3/1/s 1/1/s
64    64  1     D    2/1/s; 4/2/0/0 4/2/1/0 4/2/1/0 4/2/1/0 4/2/1/0
====  ==  ====  ===  =================================================

Parameter counts at the defaults (128 channels, residual 64, 2 blocks), D = D' from Table 2,
image channels 1 (28 px) or 3:

====  ==  ===  =========  =========  =========  =========
size  F   D    E          E'         D          f
====  ==  ===  =========  =========  =========  =========
28    14  16   760,592    347,792    651,649    193,184
32    8   96   627,168    669,792    692,227    702,656
64    16  256  1,025,024  1,018,112  1,253,763  1,394,816
====  ==  ===  =========  =========  =========  =========
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED: dict[int, tuple[int, ...]] = {28: (7, 14, 28), 32: (8, 16, 32), 64: (16, 32, 64)}

# Table 3 columns: kernels of E, E', D and f per downsampling factor ("7/8" serves F = 7 and 8).
_TABLE3: dict[int, dict[str, tuple[int, ...]]] = {
    8: {
        "encoder": (4, 3, 3, 3),
        "secondary_encoder": (4, 3, 3),
        "decoder": (3, 3, 4, 4),
        "f": (2, 2, 4),
    },
    14: {
        "encoder": (4, 3, 3, 3, 3),
        "secondary_encoder": (4, 3),
        "decoder": (2, 2, 3, 4, 4),
        "f": (2, 1),
    },
    16: {
        "encoder": (4, 4, 4, 3, 3),
        "secondary_encoder": (4, 3, 3),
        "decoder": (3, 4, 4, 4, 4),
        "f": (2, 1),
    },
    28: {
        "encoder": (4, 4, 4, 4, 3),
        "secondary_encoder": (4, 3),
        "decoder": (1, 2, 3, 4, 4),
        "f": (2, 1),
    },
    32: {
        "encoder": (4, 3, 3, 3, 3, 3),
        "secondary_encoder": (4, 3),
        "decoder": (2, 2, 4, 4, 4, 4),
        "f": (2, 1),
    },
    64: {
        "encoder": (4, 4, 4, 4, 4, 4),
        "secondary_encoder": (3, 1),
        "decoder": (2, 4, 4, 4, 4, 4),
        "f": (2, 1),
    },
}


def table3_kernels(factor: int) -> dict[str, tuple[int, ...]]:
    """Table 3 column for ``factor``: keys encoder, secondary_encoder, decoder, f (kernels)."""
    column = 8 if factor == 7 else factor
    if column not in _TABLE3:
        raise ValueError(f"Table 3 has no column for F={factor}; columns: 7/8, 14, 16, 28, 32, 64")
    return dict(_TABLE3[column])


def primary_grid(image_size: int, factor: int) -> int:
    """Side of the primary token grid, ``image_size / factor``; unsupported pairs raise."""
    if factor not in SUPPORTED.get(image_size, ()):
        listing = "; ".join(f"{s}: {', '.join(map(str, fs))}" for s, fs in SUPPORTED.items())
        raise ValueError(
            f"image size {image_size} with F={factor} is not supported; "
            f"supported (size: F): {listing}"
        )
    return image_size // factor


def down_plan(size: int, target: int, kernels: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) per conv taking ``size`` to ``target``; stride 1 means "same"."""
    plan, n = [], size
    for k in kernels:
        if n > target:
            p = next((p for p in range(k) if (n + 2 * p - k) // 2 + 1 == -(-n // 2)), None)
            if p is None:
                raise ValueError(f"kernel {k} cannot halve a {n}x{n} map")
            plan.append((k, 2, p))
            n = -(-n // 2)
        else:
            plan.append((k, 1, (k - 1) // 2))
    if n != target:
        raise ValueError(f"kernels {kernels} take {size}x{size} to {n}x{n}, not {target}x{target}")
    return plan


def up_plan(size: int, target: int, kernels: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(kernel, stride, padding, output_padding) per transposed conv taking ``size`` to ``target``.

    Dynamic programming over the map size after each layer; cost (sum |out - stride * n|,
    sum padding, sum output_padding) compared lexicographically; ties keep the first found.
    """
    best: dict[int, tuple[tuple[int, int, int], list]] = {size: ((0, 0, 0), [])}
    for k in kernels:
        nxt: dict[int, tuple[tuple[int, int, int], list]] = {}
        for n, (cost, path) in sorted(best.items()):
            for s in (2, 1):
                for p in range(k):
                    for op in range(s):
                        out = (n - 1) * s - 2 * p + k + op
                        if not 1 <= out <= target:
                            continue
                        c = (cost[0] + abs(out - s * n), cost[1] + p, cost[2] + op)
                        if out not in nxt or c < nxt[out][0]:
                            nxt[out] = (c, [*path, (k, s, p, op)])
        best = nxt
    if target not in best:
        raise ValueError(f"transposed kernels {kernels} cannot take {size}x{size} to {target}")
    return best[target][1]


class SameConv2d(nn.Conv2d):
    """Stride-1 conv keeping the spatial size for any kernel.

    Pads (k-1)//2 before and k//2 after, exactly like ``padding="same"``, but without the
    zero-padded-copy warning PyTorch emits for even kernels. On a 1x1 input only the tap
    ``(k-1)//2`` sees data (see ``center_tap``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        odd = kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2 * odd)
        lo, hi = (kernel_size - 1) // 2, kernel_size // 2
        self.extra_pad = None if odd else (lo, hi, lo, hi)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x if self.extra_pad is None else F.pad(x, self.extra_pad))


def center_tap(conv: nn.Conv2d) -> Tensor:
    """The (C_out, C_in) matrix a stride-1 "same" conv applies to a 1x1 input."""
    t = (conv.kernel_size[0] - 1) // 2
    return conv.weight[:, :, t, t]


def _conv(cin: int, cout: int, k: int, stride: int, padding: int) -> nn.Conv2d:
    return SameConv2d(cin, cout, k) if stride == 1 else nn.Conv2d(cin, cout, k, stride, padding)


class ResidualBlock(nn.Module):
    """VQ-VAE-2 block: ``x + conv1x1(act(norm(conv3x3(act(x)))))``."""

    def __init__(self, channels: int, res_channels: int, norm: Callable, act: Callable) -> None:
        super().__init__()
        self.act = act()
        self.conv3 = SameConv2d(channels, res_channels, 3)
        self.norm = norm(res_channels)
        self.conv1 = SameConv2d(res_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(self.act(self.norm(self.conv3(self.act(x)))))


class ResidualStack(nn.Module):
    """``num_blocks`` residual blocks followed by norm and activation."""

    def __init__(
        self, channels: int, res_channels: int, num_blocks: int, norm: Callable, act: Callable
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(channels, res_channels, norm, act) for _ in range(num_blocks)
        )
        self.norm, self.act = norm(channels), act()

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.act(self.norm(x))


def _check_input(x: Tensor, channels: int, size: int | None, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or (size and tuple(x.shape[-2:]) != (size, size)):
        want = f"(B, {channels}, {size}, {size})" if size else f"(B, {channels}, h, w)"
        raise ValueError(f"{name} expects {want}, got {tuple(x.shape)}")


class _ConvEncoder(nn.Module):
    """Strided convs (BatchNorm, ReLU between) -> residual stack -> 1x1 conv to ``dim``."""

    def __init__(
        self,
        in_channels: int,
        size: int,
        target: int,
        kernels: tuple[int, ...],
        dim: int,
        channels: int,
        res_channels: int,
        num_res_blocks: int,
    ) -> None:
        super().__init__()
        self.in_channels, self.size = in_channels, size
        plan = down_plan(size, target, kernels)
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(plan):
            layers += [_conv(in_channels if i == 0 else channels, channels, k, s, p)]
            layers += [nn.BatchNorm2d(channels)]
            if i < len(plan) - 1:  # the last conv's ReLU opens the first residual block
                layers += [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.res = ResidualStack(channels, res_channels, num_res_blocks, nn.BatchNorm2d, nn.ReLU)
        self.proj = nn.Conv2d(channels, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, self.size, type(self).__name__)
        h = self.res(self.body(x))  # (B, C, h, w)
        return self.proj(h)  # (B, D, h, w), no activation


class PrimaryEncoder(_ConvEncoder):
    """E: image ``(B, C, H, W)`` -> primary map ``(B, dim, H/F, W/F)``.

    Args:
        in_channels: image channels.
        image_size: H = W; with ``factor`` one of the supported pairs (``SUPPORTED``).
        factor: downsampling factor F; selects the Table 3 column.
        dim: output channels D (the primary code dimension).
        channels, res_channels, num_res_blocks: widths and depth (Table 3: 128, 64, 2).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        factor: int,
        dim: int,
        channels: int = 128,
        res_channels: int = 64,
        num_res_blocks: int = 2,
    ) -> None:
        grid = primary_grid(image_size, factor)
        kernels = table3_kernels(factor)["encoder"]
        super().__init__(
            in_channels, image_size, grid, kernels, dim, channels, res_channels, num_res_blocks
        )


class SecondaryEncoder(_ConvEncoder):
    """E': primary encoder output ``(B, in_dim, h, w)`` -> secondary map ``(B, dim, 1, 1)``.

    MVQ's E' sees only the primary encoder's output, not the image (paper, appendix A.6).
    Arguments as in ``PrimaryEncoder``, with ``in_dim`` the primary code dimension D.
    """

    def __init__(
        self,
        in_dim: int,
        image_size: int,
        factor: int,
        dim: int,
        channels: int = 128,
        res_channels: int = 64,
        num_res_blocks: int = 2,
    ) -> None:
        grid = primary_grid(image_size, factor)
        kernels = table3_kernels(factor)["secondary_encoder"]
        super().__init__(in_dim, grid, 1, kernels, dim, channels, res_channels, num_res_blocks)


class Decoder(nn.Module):
    """D: primary map ``(B, in_dim, h, w)`` -> image ``(B, out_channels, H, W)``.

    One stride-1 conv, the residual stack, then transposed convs (BatchNorm, LeakyReLU between).
    The output has no activation: images live in [-1, 1] and a tanh would flatten the gradient
    of the reconstruction loss near the extremes; clamp when displaying instead.
    Arguments as in ``PrimaryEncoder``.
    """

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        image_size: int,
        factor: int,
        channels: int = 128,
        res_channels: int = 64,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.in_dim, self.grid = in_dim, primary_grid(image_size, factor)
        first, *rest = table3_kernels(factor)["decoder"]
        self.conv_in = nn.Sequential(SameConv2d(in_dim, channels, first), nn.BatchNorm2d(channels))
        act = nn.LeakyReLU
        self.res = ResidualStack(channels, res_channels, num_res_blocks, nn.BatchNorm2d, act)
        plan = up_plan(self.grid, image_size, tuple(rest))
        layers: list[nn.Module] = []
        for i, (k, s, p, op) in enumerate(plan):
            last = i == len(plan) - 1
            layers.append(
                nn.ConvTranspose2d(channels, out_channels if last else channels, k, s, p, op)
            )
            layers += [] if last else [nn.BatchNorm2d(channels), act()]
        self.up = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        _check_input(z, self.in_dim, self.grid, "Decoder")
        h = self.res(self.conv_in(z))  # (B, C, h, w)
        return self.up(h)  # (B, out_channels, H, W)


def trunk_math(
    h: Tensor,
    mats: list[Tensor],
    biases: list[Tensor],
    norms: list[Tensor],
    slope: float,
    eps: float,
    num_convs: int,
    num_blocks: int,
) -> Tensor:
    """Table 3's f between ``first`` and ``expand`` on rows, as a pure function of its
    tensors: ``(N, C)`` fp32 -> ``(N, D)`` fp32. The one place f's 1x1 arithmetic is written:
    ``MHNetwork.forward_fast`` (training, with autograd), the MH-Dropout search (no grad,
    eager) and its ``torch.compile``d first pass all run it (``MHNetwork.trunk_args``).

    ``mats``: each conv's ``(C_in, C_out)`` centre tap, in the order convs, (conv3, conv1) per
    residual block, proj; fp32 (the product and bias fused in one ``addmm``) or bfloat16 (the
    activation rounded to it, the product back in fp32, then the fp32 bias). ``biases``: their
    fp32 biases. ``norms``: weight and bias of each GroupNorm(1, C) in turn (norms, block
    norms, the stack's last), which on rows is LayerNorm over C (``F.layer_norm``: several
    times faster on the CPU).
    """

    def norm(i: int, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[1:], norms[2 * i], norms[2 * i + 1], eps)

    def linear(i: int, x: Tensor) -> Tensor:  # act(x) @ W + b, in fp32
        w, a = mats[i], F.leaky_relu(x, slope)
        if w.dtype == torch.float32:
            return torch.addmm(biases[i], a, w)
        return (a.to(w.dtype) @ w).float() + biases[i]

    h = norm(0, h)
    for i in range(num_convs):
        h = norm(1 + i, linear(i, h))
    for k in range(num_blocks):
        t = norm(1 + num_convs + k, linear(num_convs + 2 * k, h))  # (N, res_channels)
        h = h + linear(num_convs + 2 * k + 1, t)
    return linear(num_convs + 2 * num_blocks, norm(1 + num_convs + num_blocks, h))  # (N, D)


class MHNetwork(nn.Module):
    """f: masked secondary code ``(B, in_dim, 1, 1)`` -> residual ``(B, out_dim, grid, grid)``.

    ``first`` (stride-1 conv, first kernel) -> [GroupNorm, LeakyReLU, conv] per further kernel
    -> GroupNorm -> residual stack -> 1x1 conv to ``out_dim`` -> transposed conv with kernel =
    stride = ``grid`` spreading 1x1 onto grid x grid (absent when grid == 1).

    No BatchNorm: MH-Dropout runs f on B*J masked codes and keeps one winner per instance. With
    batch statistics each hypothesis's output would depend on the others, so the hypotheses
    would not be independent sub-networks and searching without gradients, then recomputing
    only the winners, would not reproduce the search's values. GroupNorm(1, C) normalises each
    sample on its own (on a 1x1 map it is LayerNorm over channels).

    ``first`` is a plain conv applied directly to the masked code (no norm or activation before
    it), so on a 1x1 input ``first(e' * m) = W diag(e') m + bias`` with ``W =
    center_tap(first)``: linear in the mask m (see ``mvq.quantizers.mh_search``).

    On 1x1 inputs (the MVQ case) every conv sees only its centre tap, so ``forward`` runs the
    layers as matrix products on (N, C) rows (``forward_fast``); other sizes use the convs
    (``forward_conv``). The two agree to float rounding, gradients included.

    Args:
        in_dim: secondary code dimension D'.
        out_dim: primary code dimension D.
        grid: primary grid side h = w.
        factor_kernels: Table 3's "Decoder 2 (f)" kernels (``table3_kernels(F)["f"]``).
        channels, res_channels, num_res_blocks: widths and depth (Table 3: 128, 64, 2).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid: int,
        factor_kernels: tuple[int, ...] = (2, 1),
        channels: int = 128,
        res_channels: int = 64,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid
        self.first = SameConv2d(in_dim, channels, factor_kernels[0])
        self.convs = nn.ModuleList(SameConv2d(channels, channels, k) for k in factor_kernels[1:])
        self.norms = nn.ModuleList(nn.GroupNorm(1, channels) for _ in factor_kernels)
        self.act = nn.LeakyReLU()
        self.res = ResidualStack(
            channels, res_channels, num_res_blocks, lambda c: nn.GroupNorm(1, c), nn.LeakyReLU
        )
        self.proj = SameConv2d(channels, out_dim, 1)
        self.expand = nn.ConvTranspose2d(out_dim, out_dim, grid, grid) if grid > 1 else None

    def forward_conv(self, c: Tensor) -> Tensor:
        """Convolutional path, any spatial size: ``(B, D', h', w') -> (B, D, h'*grid, w'*grid)``."""
        _check_input(c, self.in_dim, None, "MHNetwork")
        h = self.norms[0](self.first(c))
        for conv, norm in zip(self.convs, self.norms[1:], strict=True):
            h = norm(conv(self.act(h)))
        h = self.proj(self.res(h))  # (B, D, h', w')
        return h if self.expand is None else self.expand(h)

    def trunk_args(self, dtype: torch.dtype | None = None) -> tuple:
        """The arguments after ``h`` of ``trunk_math`` that compute this f's trunk, the
        products in ``dtype`` (default fp32: views of the weights, gradients flow; bfloat16:
        copies, for the search's fast first pass)."""
        blocks = [conv for b in self.res.blocks for conv in (b.conv3, b.conv1)]
        convs = [*self.convs, *blocks, self.proj]
        mats = [center_tap(conv).t() for conv in convs]  # (C_in, C_out) views
        if dtype not in (None, torch.float32):
            mats = [m.to(dtype) for m in mats]
        norm_layers = [*self.norms, *(b.norm for b in self.res.blocks), self.res.norm]
        eps = {m.eps for m in norm_layers}
        if len(eps) != 1:
            raise ValueError("f's rows need one eps for all of its GroupNorms")
        norms = [t for m in norm_layers for t in (m.weight, m.bias)]
        biases = [conv.bias for conv in convs]
        slope = self.act.negative_slope
        return mats, biases, norms, slope, eps.pop(), len(self.convs), len(self.res.blocks)

    def forward_fast(self, c: Tensor) -> Tensor:
        """Matrix-product path for 1x1 inputs: ``(B, D', 1, 1) -> (B, D, grid, grid)``."""
        _check_input(c, self.in_dim, 1, "MHNetwork")
        h = torch.addmm(self.first.bias, c.flatten(1), center_tap(self.first).t())  # (B, C)
        h = trunk_math(h, *self.trunk_args())  # (B, D)
        if self.expand is None:
            return h[:, :, None, None]
        g = self.grid
        out = h @ self.expand.weight.flatten(1)  # (B, D * g * g)
        return out.view(-1, self.out_dim, g, g) + self.expand.bias.view(1, -1, 1, 1)

    def forward(self, c: Tensor) -> Tensor:
        """``forward_fast`` on 1x1 inputs, ``forward_conv`` otherwise."""
        if c.dim() == 4 and c.shape[-2:] == (1, 1):
            return self.forward_fast(c)
        return self.forward_conv(c)


__all__ = [
    "SUPPORTED",
    "Decoder",
    "MHNetwork",
    "PrimaryEncoder",
    "ResidualBlock",
    "ResidualStack",
    "SameConv2d",
    "SecondaryEncoder",
    "center_tap",
    "down_plan",
    "primary_grid",
    "table3_kernels",
    "up_plan",
]
