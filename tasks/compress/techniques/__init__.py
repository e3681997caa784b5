"""The technique catalogue: importing this package registers every technique a recipe can name.

One module per family (export, ONNX optimizations, quantization, mixed precision, pruning,
distillation, low-rank factorization, vocabulary trimming); each imports only pydantic at import time, so
loading a recipe (or parsing a DAG) stays cheap.
"""

from tasks.compress.technique import TECHNIQUES, get_technique
from tasks.compress.techniques import (
    distill,
    lowrank,
    mixed_precision,
    onnx_export,
    onnx_fp16,
    onnx_optimize,
    onnx_quantize,
    prune,
    vocab,
)

__all__ = [
    "TECHNIQUES",
    "distill",
    "get_technique",
    "lowrank",
    "mixed_precision",
    "onnx_export",
    "onnx_fp16",
    "onnx_optimize",
    "onnx_quantize",
    "prune",
    "vocab",
]
