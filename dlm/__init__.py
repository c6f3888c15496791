"""dlm: the core library. Model (`dlm.model`), configs and presets (`dlm.config`), checkpoints,
tokenizer, the request schema (`dlm.schema`), the engine interface and the samplers. Knows
nothing of Triton. Importing `dlm` imports nothing else: the schema stays torch-free."""
