"""vitopt: compress timm Vision Transformers, export them and benchmark what you ship."""

__version__ = "0.1.0"
