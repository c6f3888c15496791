"""DiffusionGemma (google/diffusiongemma-*): block diffusion by an encoder-decoder pair.

An encoder reads the context causally and writes a KV cache; a decoder denoises a canvas of
`canvas_length` tokens over that cache, fed its previous step's logits (self-conditioning).
`config` parses the checkpoint's config.json, `model` holds the two passes, `checkpoint` loads
the safetensors layout that transformers' `DiffusionGemmaForBlockDiffusion` writes.
"""

MODEL_TYPE = "diffusion_gemma"  # config.json's model_type, and our family name for it
