"""Transfer learning: fine-tune the ImageNet embedder on the catalog and export it as a new model version."""
