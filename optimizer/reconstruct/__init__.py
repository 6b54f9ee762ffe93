"""Reconstruction after compression: closed-form and block-wise repair from unlabeled images.

``reconstruct_model(model, teacher, ctx, ReconstructConfig(mode="blockwise"))`` — see ``driver``.
Heavy modules (torch) load on first use of the driver, so importing the config stays light.
"""
from .config import ReconstructConfig


def reconstruct_model(model, teacher, ctx, cfg, group_sizes=None):
    """See ``optimizer.reconstruct.driver.reconstruct_model``."""
    from .driver import reconstruct_model as run
    return run(model, teacher, ctx, cfg, group_sizes)


__all__ = ["ReconstructConfig", "reconstruct_model"]
