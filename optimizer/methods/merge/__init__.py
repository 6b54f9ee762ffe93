"""Token merging (ToMe, Bolya et al., ICLR 2023) for timm ViTs, without training.

    from optimizer.methods.merge import MergeConfig
    cm = compress(model, [MergeConfig(macs_ratio=0.75)])          # or MergeConfig(r=8), schedule=[...]

CLI: ``vitopt compress --method merge --model deit_tiny_patch16_224 --checkpoint W --macs 0.75 -o out/``
(``--set r=8`` or ``--set schedule=16,16,12,...`` instead of a budget). Also slim's token mode
(``SlimConfig(token_mode="merge")``): heads / MLP widths sliced and a merge schedule on top.

Export (established on this tree with ``optimizer.deploy.deploy_model``, see tests/merge and
benchmarks/results/token_merge.md): the matching runs in the graph as MatMul, ReduceMax/ArgMax,
Greater/Equal/And/Or, ReduceSum, Where, ArgMax + GatherElements (the unmerged and merged tokens),
Equal+Cast (the one-hot assignment of the r merged tokens to B) and MatMul + Div for the weighted
merge — no ScatterElements (TensorRT for RTX 1.7 rejects ``reduction="add"``), no TopK or
sort (ties are broken by position in every backend), no CumSum. ONNX Runtime runs it at any batch
size equal to PyTorch within the fp32 tolerance, and TensorRT for RTX builds an engine from it
(building is all this CPU machine can check; running needs a GPU).

Modules: ``matching`` (bipartite soft matching, destinations, one-hot merge), ``block``
(MergeAttention with proportional attention, TokenMergeBlock, MergeBlocks), ``schedule``
(closed-form MACs, budget -> static schedule), ``config``, ``method`` (apply / rebuild / structure),
``slim_mode`` (slim's ``token_mode="merge"``, its default), ``allocation`` (slim's candidates ranked
after a closed-form reconstruction), ``sources`` (which original tokens each merged token holds: the
distillation's teacher targets).
"""
from ...compress.registry import register_method
from .block import MergeBlocks, TokenMergeBlock, merge_schedule, merge_tokens
from .config import MergeConfig
from .matching import match_tokens, merge_weighted, recording_margins
from .method import apply, rebuild, structure_of
from .schedule import MacsModel, merged_block_macs, schedule_for_macs

register_method("merge", MergeConfig, apply, rebuild,
                "ToMe token merging: bipartite soft matching on the keys, size-weighted merges, proportional attention",
                decision_margins=recording_margins)

__all__ = ["MergeConfig", "apply", "rebuild", "structure_of", "merge_tokens", "merge_schedule", "MergeBlocks",
           "TokenMergeBlock", "match_tokens", "merge_weighted", "MacsModel", "merged_block_macs",
           "schedule_for_macs"]
