"""Quantizers sharing one interface: ``forward -> QuantizerOutput``, ``encode``, ``decode``.

Imports ``mvq.core.tokens`` (``Tokens``, re-exported here), ``mvq.nets`` (MVQ's f) and
``mvq.core.registry``; never the tokenizers, priors or samplers.
"""

from mvq.core.tokens import Tokens
from mvq.quantizers.base import QuantizerOutput
from mvq.quantizers.bsq import BSQ
from mvq.quantizers.fsq import FSQ
from mvq.quantizers.lfq import LFQ
from mvq.quantizers.masked_vq import MaskedVectorQuantizer, MHDropoutConfig
from mvq.quantizers.residual import ResidualVQ
from mvq.quantizers.vq import VectorQuantizer

__all__ = [
    "BSQ",
    "FSQ",
    "LFQ",
    "MHDropoutConfig",
    "MaskedVectorQuantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "Tokens",
    "VectorQuantizer",
]
