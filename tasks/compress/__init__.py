"""Compression: the technique registry (`technique`), the catalogue of techniques recipes
name (`techniques/`: export, ONNX optimizations, quantization, pruning, distillation,
vocabulary trimming), and the training loop the trained techniques share."""
