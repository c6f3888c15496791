"""Custom ops that run inside the serving engines (ONNX Runtime, TensorRT, PyTorch).

`denoise_step`: the fused DenoiseStep op, logits in, chosen token and its confidence out.
"""
