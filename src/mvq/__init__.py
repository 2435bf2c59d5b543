"""mvq: compact discrete image tokenizers (MVQ with MH-Dropout, VQ, FSQ) and their priors.

Imports run one way, down the data flow: ``mvq.core.tokens`` (the token contract, torch only) <-
``mvq.quantizers`` <- ``mvq.tokenizers``, and ``mvq.core.tokens`` <- ``mvq.priors`` <-
``mvq.sampling``; the command line (``mvq.cli``) is imported by nothing in the library. This
package re-exports the quantizers and ``Tokens``.
"""

from mvq.core.tokens import Tokens
from mvq.quantizers import (
    BSQ,
    FSQ,
    LFQ,
    MaskedVectorQuantizer,
    QuantizerOutput,
    ResidualVQ,
    VectorQuantizer,
)

__all__ = [
    "BSQ",
    "FSQ",
    "LFQ",
    "MaskedVectorQuantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "Tokens",
    "VectorQuantizer",
]
__version__ = "0.1.0"
