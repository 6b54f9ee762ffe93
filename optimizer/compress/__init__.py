"""One entry point for every compression method: typed configs + registered transforms.

    compressed = compress(model, [SlimConfig(macs_ratio=0.7), LowRankConfig(params_ratio=0.5)], ctx)
    save_compressed("out/", compressed)          # recipe.json + model.safetensors
    loaded = load_compressed("out/")             # rebuilt from the base model name alone
"""
from .config import MethodConfig, config_from_dict
from .registry import CompressContext, Method, get_method, method_names, register_method
from .api import CompressedModel, compress
from .saving import load_compressed, save_compressed

__all__ = ["MethodConfig", "config_from_dict", "CompressContext", "Method", "get_method", "method_names",
           "register_method", "CompressedModel", "compress", "load_compressed", "save_compressed"]
