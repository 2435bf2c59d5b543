"""mvq: compact discrete image tokenizers (MVQ with MH-Dropout, VQ, FSQ) and their priors."""

from mvq.quantizers import (
    FSQ,
    MaskedVectorQuantizer,
    QuantizerOutput,
    Tokens,
    VectorQuantizer,
)

__all__ = ["FSQ", "MaskedVectorQuantizer", "QuantizerOutput", "Tokens", "VectorQuantizer"]
__version__ = "0.1.0"
