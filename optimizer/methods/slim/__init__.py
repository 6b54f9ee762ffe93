"""ViT-Slim: learned soft-mask search, sliced into a physically smaller timm ViT.

    from optimizer.methods.slim import SlimConfig
    cm = compress(model, [SlimConfig(macs_ratio=0.7)], CompressContext(calib_dir="train/", teacher=dense))

CLI: ``vitopt compress --method slim --model deit_tiny_patch16_224 --checkpoint W --calib train/
--macs 0.7 -o out/`` (``--set ranking=per_type``, ``--set importance=taylor`` for the search-free
baseline, ``--set epochs=2``, ``--set freeze_weights=false`` ...). With ``--work-dir DIR`` the search
is resumable, and a later run with another budget but the same search settings reuses the finished
search (budgets are thresholds of one set of mask values, as in the paper).

Modules: ``search`` (masked model + search loop), ``baseline`` (Taylor / magnitude importance),
``budget`` (threshold solver, analytic MACs/params), ``slicing`` (physical slicing and rebuild),
``recovery`` (fine-tune from the dense teacher), ``method`` (the registered ``apply``).
"""
from ...compress.registry import register_method
from .budget import Geometry, plan_counts, solve_budget
from .config import SlimConfig
from .method import apply, importance_of, slim_from_importance
from .recovery import recover_model
from .search import SearchModel, SearchResult, search_masks
from .slicing import rebuild, slice_model, structure_from_plan

register_method("slim", SlimConfig, apply, rebuild,
                "ViT-Slim: learned masks on heads/dims, MLP units and tokens, sliced to a smaller ViT")

__all__ = ["SlimConfig", "apply", "rebuild", "slice_model", "structure_from_plan", "search_masks",
           "SearchModel", "SearchResult", "Geometry", "plan_counts", "solve_budget", "importance_of",
           "slim_from_importance", "recover_model"]
