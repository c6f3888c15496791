"""The fused DenoiseStep op: logits [B, T, V] -> token [B, T] int64, confidence [B, T] float32.

Modules (import the one you need; this package imports nothing heavy, so a caller can still set
TRITON_INTERPRET before `triton_kernel` loads triton):
- `contract`: shapes, dtypes, the noise hash, input checks, plugin identity.
- `reference`: the NumPy spec and the PyTorch implementation (exportable to standard ONNX).
- `triton_kernel`: the fused OpenAI Triton kernel and its launcher.
- `onnx_op`: standard-op ONNX export, the `dlm::DenoiseStep` plugin node, graph surgery.
- `tensorrt_plugin`: the TensorRT AOT Python plugin (needs TensorRT >= 10.9).
- `gpu_check`, `bench_cpu`: the GPU correctness/speed check and the CPU benchmark (scripts).
"""

from plugins.denoise_step.contract import OP_ID, output_specs

__all__ = ["OP_ID", "output_specs"]
