"""Image folders with ImageNet-synset labels and timm's evaluation transform."""
from .labels import LabelMap, find_label_map
from .folder import ImageFolderData, build_loader

__all__ = ["LabelMap", "find_label_map", "ImageFolderData", "build_loader"]
