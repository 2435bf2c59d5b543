"""Shared training infrastructure: ``train`` with its config, checkpoints and resumable sampler."""

from mvq.core.pretrained import CheckpointError
from mvq.training.checkpoint import RunDirError, checkpoint_path, load_checkpoint, save_checkpoint
from mvq.training.config import TrainConfig, TrainResult
from mvq.training.interrupt import STOP_STATUS, RunStopped
from mvq.training.sampler import EpochBatchSampler
from mvq.training.trainer import Callback, TrainingDiverged, train

__all__ = [
    "Callback",
    "CheckpointError",
    "EpochBatchSampler",
    "RunDirError",
    "RunStopped",
    "STOP_STATUS",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "checkpoint_path",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
