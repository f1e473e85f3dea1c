"""Callbacks: monitor, verified checkpoints (last, best), early stopping, preemption, non-finite guard, predictions,
samples, bench probe.
"""  # noqa: D205

from lightft.callbacks.bench import BenchProbe
from lightft.callbacks.checkpoint import BestCheckpoint, VerifiedCheckpoint, verify_checkpoint
from lightft.callbacks.early_stopping import EarlyStop
from lightft.callbacks.monitor import TrainingMonitor, peak_memory_bytes
from lightft.callbacks.nonfinite import NonFiniteGuard
from lightft.callbacks.predictions import PredictionWriter
from lightft.callbacks.preemption import Preemption
from lightft.callbacks.samples import SampleGenerations

__all__ = [
    "BenchProbe",
    "BestCheckpoint",
    "EarlyStop",
    "NonFiniteGuard",
    "Preemption",
    "PredictionWriter",
    "SampleGenerations",
    "TrainingMonitor",
    "VerifiedCheckpoint",
    "peak_memory_bytes",
    "verify_checkpoint",
]
