"""Quantizers sharing one interface: ``forward -> QuantizerOutput``, ``encode``, ``decode``."""

from mvq.quantizers.base import QuantizerOutput, Tokens
from mvq.quantizers.fsq import FSQ
from mvq.quantizers.masked_vq import MaskedVectorQuantizer
from mvq.quantizers.vq import VectorQuantizer

__all__ = ["FSQ", "MaskedVectorQuantizer", "QuantizerOutput", "Tokens", "VectorQuantizer"]
