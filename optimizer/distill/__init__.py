"""Manifold distillation and the recovery trainer every compression method uses.

    from optimizer.distill import DistillConfig, recover
    report = recover(student, teacher, ctx, DistillConfig(steps=200))   # fine-tunes ``student`` in place
"""
from .config import DistillConfig
from .loss import LossTerms, ManifoldDistillLoss, relation_losses, sample_patches
from .features import BlockTap, matched_features


def logit_distill_config(**kw) -> DistillConfig:
    """The same trainer with plain logit distillation (beta = 0)."""
    return DistillConfig(beta=0.0, **kw)


def __getattr__(name):
    # the trainer pulls in the data pipeline and torch.distributed: import it on first use
    if name in ("recover", "DistillReport"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(name)


__all__ = ["DistillConfig", "LossTerms", "ManifoldDistillLoss", "relation_losses", "sample_patches",
           "BlockTap", "matched_features", "logit_distill_config", "recover"]
