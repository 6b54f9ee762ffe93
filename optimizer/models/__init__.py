"""Model loading (timm names, checkpoints, compressed directories) and the prunable ViT block."""
