"""Serving logic in plain Python (no Triton import): what the Triton models in
`model_repository/templates/` call. Each module is unit-tested without a server.

- `engine`: the engine the `dlm` model serves (`load_engine`) and its counts (`MeteredEngine`);
- `orchestrator`: the scheduler thread of the `dlm` model, beside the engine and its KV cache;
- `cancel`: ensemble cancellations, from `postprocessing` to the `dlm` instance that runs them;
- `requests`: text and knobs to a validated request (preprocessing), and its form on the way
  to `dlm` (token ids plus the knobs as JSON);
- `detok`: stateless incremental detokenisation (postprocessing);
- `metrics`: the custom metrics served beside Triton's on the metrics port.
"""
