"""Callbacks: monitor, verified atomic checkpoints, preemption, non-finite guard, predictions, samples, bench probe."""

from lightft.callbacks.bench import BenchProbe
from lightft.callbacks.checkpoint import VerifiedCheckpoint, verify_checkpoint
from lightft.callbacks.monitor import TrainingMonitor, peak_memory_bytes
from lightft.callbacks.nonfinite import NonFiniteGuard
from lightft.callbacks.predictions import PredictionWriter
from lightft.callbacks.preemption import Preemption
from lightft.callbacks.samples import SampleGenerations

__all__ = [
    "BenchProbe",
    "NonFiniteGuard",
    "Preemption",
    "PredictionWriter",
    "SampleGenerations",
    "TrainingMonitor",
    "VerifiedCheckpoint",
    "peak_memory_bytes",
    "verify_checkpoint",
]
