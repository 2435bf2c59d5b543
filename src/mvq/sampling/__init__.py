"""Samplers for the token priors, apart from the networks (pure functions of prior and RNG).

* ``sample_autoregressive`` (``TransformerPrior``, key/value cache, whole batches) and the
  naive baseline ``sample_autoregressive_naive``;
* ``sample_pixelcnn`` (``PixelCNNPrior``, raster order);
* ``sample_maskgit`` (``MaskGITPrior``), with ``mask_schedule`` / ``num_masked`` re-exported
  from ``mvq.priors.mask_schedules``;
* ``filter_logits`` (top-k / nucleus) and ``sample_logits``.

Imports ``mvq.priors`` (the samplers check the prior's class), ``mvq.core.tokens`` and
``mvq.priors.mask_schedules``, none of which imports ``mvq.sampling`` back.
"""

from mvq.priors.mask_schedules import SCHEDULES, mask_schedule, num_masked
from mvq.sampling.autoregressive import sample_autoregressive, sample_autoregressive_naive
from mvq.sampling.common import filter_logits, sample_logits
from mvq.sampling.maskgit import sample_maskgit
from mvq.sampling.pixelcnn import sample_pixelcnn

__all__ = [
    "SCHEDULES",
    "filter_logits",
    "mask_schedule",
    "num_masked",
    "sample_autoregressive",
    "sample_autoregressive_naive",
    "sample_logits",
    "sample_maskgit",
    "sample_pixelcnn",
]
