"""Serving logic in plain Python (no Triton import): what the Triton models in
`model_repository/templates/` call. Each module is unit-tested without a server.

- `wire`: the denoiser's tensors (passes in, token ids and confidences out; never logits);
- `orchestrator`: the scheduler thread of the `dlm` model and its `RemoteEngine`;
- `denoiser`: the engine behind the wire, with the KV cache per sequence;
- `requests`: text and knobs to a validated request (preprocessing), and its wire form;
- `detok`: stateless incremental detokenisation (postprocessing);
- `metrics`: the custom metrics served beside Triton's on the metrics port.
"""
