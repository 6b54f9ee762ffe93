"""Class labels from a synset list, so folder order never decides a label.

Supported lists: ``synsets.tsv`` (index<TAB>synset<TAB>name, optional header), ImageNet's
``synset_words.txt`` ("n01440764 tench, ...", row = label) and ``LOC_synset_mapping.txt`` (same
shape). Without a list, sorted class folder names are the labels (torchvision's rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import VitoptError

LIST_NAMES = ("synsets.tsv", "synset_words.txt", "LOC_synset_mapping.txt")


@dataclass
class LabelMap:
    index: dict            # class folder name -> label
    names: list            # label -> human-readable name
    source: str            # the list file, or "sorted folders"

    def __len__(self) -> int:
        return len(self.names)


def read_synset_list(path: str | Path) -> LabelMap:
    path = Path(path)
    if not path.is_file():
        raise VitoptError(f"synset list not found: {path}")
    index, names = {}, []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" in line:
            parts = line.split("\t")
            if lineno == 1 and parts[0].strip().lower() == "index":
                continue  # header
            if len(parts) >= 2 and parts[0].strip().isdigit():
                label, syn = int(parts[0]), parts[1].strip()
                name = parts[2].strip() if len(parts) > 2 else syn
                if label != len(names):
                    raise VitoptError(f"{path}:{lineno}: index {label} out of order (expected {len(names)})")
            else:
                syn, name = parts[0].strip(), (parts[1].strip() if len(parts) > 1 else parts[0].strip())
        else:
            syn, _, name = line.strip().partition(" ")
            name = name or syn
        if syn in index:
            raise VitoptError(f"{path}:{lineno}: synset {syn} listed twice")
        index[syn] = len(names)
        names.append(name)
    if not names:
        raise VitoptError(f"synset list {path} is empty")
    return LabelMap(index, names, str(path))


def find_label_map(root: str | Path, synsets: Optional[str | Path] = None) -> LabelMap:
    """The label map for an image folder: an explicit list, one found beside/above it, or sorted folders."""
    root = Path(root)
    if synsets:
        return read_synset_list(synsets)
    for d in (root, root.parent):
        for name in LIST_NAMES:
            if (d / name).is_file():
                return read_synset_list(d / name)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise VitoptError(f"no class folders in {root} and no synset list (synsets.tsv / synset_words.txt)")
    return LabelMap({c: i for i, c in enumerate(classes)}, classes, "sorted folders")
