"""Callbacks: throughput and memory monitor, verified checkpoints, prediction writer, benchmark probe."""

from lightft.callbacks.bench import BenchProbe
from lightft.callbacks.checkpoint import VerifiedCheckpoint, verify_checkpoint
from lightft.callbacks.monitor import TrainingMonitor, peak_memory_bytes
from lightft.callbacks.predictions import PredictionWriter

__all__ = [
    "BenchProbe",
    "PredictionWriter",
    "TrainingMonitor",
    "VerifiedCheckpoint",
    "peak_memory_bytes",
    "verify_checkpoint",
]
