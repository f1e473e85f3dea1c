"""Quantization: post-training, calibration, quantization-aware training and GGUF export.

`lightft quantize` (torchao, bitsandbytes), the calibration observers, a module's `qat:` option (torchao's QAT) and
`lightft export --format gguf` (the `gguf` package).
"""

from lightft.quantization.schemes import QuantScheme, quantizable_linears

__all__ = ["QuantScheme", "quantizable_linears"]
