"""Compression methods; each sub-package registers itself with optimizer.compress on import."""
