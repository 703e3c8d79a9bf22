"""Export of the TorchScript image-embedding model and its Triton config (build time only, never served)."""
