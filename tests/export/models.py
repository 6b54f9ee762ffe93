"""Test models: a tiny ViT whose blocks have different heads, head dims, MLP widths and token sets."""
from __future__ import annotations

import torch
import torch.nn as nn

from optimizer.models.blocks import PrunedAttention, PrunedBlock, make_prunable
from tests.conftest import tiny_vit


def _slice_block(block: PrunedBlock, heads, head_dim: int, hidden: int, token_index) -> PrunedBlock:
    attn = block.attn
    H, D = attn.num_heads, attn.head_dim
    dim = attn.qkv.in_features
    rows = [s * H * D + h * D + d for s in range(3) for h in heads for d in range(head_dim)]
    cols = [h * D + d for h in heads for d in range(head_dim)]
    new_attn = PrunedAttention(dim, len(heads), head_dim, attn.scale)
    with torch.no_grad():
        new_attn.qkv.weight.copy_(attn.qkv.weight[rows])
        new_attn.qkv.bias.copy_(attn.qkv.bias[rows])
        new_attn.proj.weight.copy_(attn.proj.weight[:, cols])
        new_attn.proj.bias.copy_(attn.proj.bias)
    mlp = block.mlp
    fc1, fc2 = mlp.fc1, mlp.fc2
    new_fc1, new_fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
    with torch.no_grad():
        new_fc1.weight.copy_(fc1.weight[:hidden])
        new_fc1.bias.copy_(fc1.bias[:hidden])
        new_fc2.weight.copy_(fc2.weight[:, :hidden])
        new_fc2.bias.copy_(fc2.bias)
    mlp.fc1, mlp.fc2 = new_fc1, new_fc2
    return PrunedBlock(block.norm1, new_attn, block.ls1, block.norm2, mlp, block.ls2,
                       token_index=token_index)


def pruned_tiny_vit(seed: int = 0) -> nn.Module:
    """depth-3 tiny ViT (17 tokens): per-block heads 3x12 / 2x16 / 4x16, MLP 100 / 64 / 256, tokens 17->11->7."""
    model = make_prunable(tiny_vit(depth=3, seed=seed))
    with torch.no_grad():  # non-trivial biases so sliced bias entries matter
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.05)
    model.blocks[0] = _slice_block(model.blocks[0], [0, 2, 3], 12, 100, [0, 1, 2, 3, 5, 8, 9, 10, 12, 15, 16])
    model.blocks[1] = _slice_block(model.blocks[1], [1, 3], 16, 64, [0, 2, 4, 5, 6, 9, 10])
    model.blocks[2] = _slice_block(model.blocks[2], [0, 1, 2, 3], 16, 256, None)
    return model.eval()


# tolerances used across export/graph/engine tests, in one place
TOLERANCES = {
    "fp32_export_atol": 1e-4,      # lossless: PyTorch vs ONNX Runtime, max abs diff of logits
    "lossless_pass_atol": 1e-5,    # a graph rule / cleanup: ORT before vs after
    "fp16_min_cosine": 0.999,      # fp16 vs fp32 logits, worst sample
    "fp16_min_top1_agreement": 0.95,
}


def export_tiny(tmp_path, model=None, name: str = "m.onnx", **kw):
    """Export ``model`` (default: tiny ViT) and return (model, path)."""
    from optimizer.export import onnx_from_torch
    model = tiny_vit() if model is None else model
    path = tmp_path / name
    onnx_from_torch(model, path, **kw)
    return model, path


def run_ort(path_or_proto, x):
    """First output of the model in ONNX Runtime for the float32 array ``x``."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    src = path_or_proto if isinstance(path_or_proto, (str, bytes)) or hasattr(path_or_proto, "__fspath__") \
        else path_or_proto.SerializeToString()
    if hasattr(src, "__fspath__"):
        src = str(src)
    sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
