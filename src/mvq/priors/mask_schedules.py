"""MaskGIT mask schedules: how many tokens stay masked as decoding progresses (torch only).

``mask_schedule(name, r)`` is gamma(r), the fraction of tokens still masked at progress
``r in [0, 1]``: gamma(0) = 1, gamma(1) = 0, non-increasing (``SCHEDULES`` holds the names).
``num_masked(t, T, N)`` turns it into token counts for step ``t`` of ``T``. The MaskGIT prior
masks ``ceil(gamma(r) N)`` tokens to train (``mvq.priors.maskgit``); its sampler re-masks
``num_masked`` tokens per step (``mvq.sampling.maskgit``). After google-research/maskgit's
``mask_schedule.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "cosine": lambda r: torch.cos(r * (math.pi / 2)),
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,
    "cubic": lambda r: 1 - r**3,
    "sqrt": lambda r: 1 - r.sqrt(),
}


def mask_schedule(name: str, ratio: float | Tensor) -> float | Tensor:
    """gamma(ratio), the masked fraction at progress ``ratio in [0, 1]`` (float or tensor).

    Exactly 1 at 0 and exactly 0 at 1 for every schedule (``cos(pi / 2)`` is not 0 in floats).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown mask schedule '{name}'; choose from {list(SCHEDULES)}")
    r = torch.as_tensor(ratio, dtype=torch.float64 if not isinstance(ratio, Tensor) else None)
    if r.numel() and (bool(r.min() < 0) or bool(r.max() > 1)):
        raise ValueError(f"mask_schedule ratio must be in [0, 1], got {ratio}")
    gamma = SCHEDULES[name](r).clamp(0, 1)
    gamma = torch.where(r >= 1, torch.zeros_like(gamma), torch.where(r <= 0, 1.0, gamma))
    return gamma if isinstance(ratio, Tensor) else float(gamma)


def num_masked(step: int, steps: int, total: int, schedule: str = "cosine") -> int:
    """Tokens still masked after ``step`` of ``steps`` decoding steps over ``total`` tokens.

    ``ceil(gamma(step / steps) * total)``, lowered where needed so that every step unmasks at
    least one token and raised so that every remaining step can still unmask one: the counts
    go strictly down from ``total`` at step 0 to 0 at step ``steps``.
    """
    if steps < 1 or total < 1:
        raise ValueError(f"steps and total must be >= 1, got steps={steps}, total={total}")
    if steps > total:
        raise ValueError(
            f"steps={steps} exceeds the {total} tokens per instance: every step unmasks at "
            f"least one token, so use steps <= {total}"
        )
    if not 0 <= step <= steps:
        raise ValueError(f"step must be in [0, {steps}], got {step}")
    # a(j) + j is the count step j would leave if every later step unmasked exactly one;
    # the 1e-9 keeps float error (e.g. (1 - 1/3) * 3 = 2.0000000000000004) from adding a token
    lowest = min(
        math.ceil(mask_schedule(schedule, j / steps) * total - 1e-9) + j for j in range(step + 1)
    )
    return max(lowest - step, steps - step)
