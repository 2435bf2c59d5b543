"""The contracts every stage shares: tokens and token files, the name registry, errors, pixel
conversion, saved models and the atomic writer. Imports torch, safetensors and nothing of mvq
outside ``mvq.core``."""
