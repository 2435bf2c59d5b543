"""Image data sets for training tokenizers: ``build_dataset(name, root, split)``.

Every item is ``(image, label)``: image float32 ``(C, H, W)`` in ``[-1, 1]``, label an int
(-1 when unlabeled). Problems raise ``DataError`` (a ``ValueError``) with a one-line fix.
Imports ``mvq.core.registry`` only.
"""

from mvq.data.base import DataError, DataInfo, TensorImageDataset, fit_square, uint8_to_float
from mvq.data.build import (
    DATASETS,
    DatasetSpec,
    Table2,
    build_dataset,
    data_channels,
    dataset_info,
    paper_data,
)

__all__ = [
    "DATASETS",
    "DataError",
    "DataInfo",
    "DatasetSpec",
    "Table2",
    "TensorImageDataset",
    "build_dataset",
    "data_channels",
    "dataset_info",
    "fit_square",
    "paper_data",
    "uint8_to_float",
]
