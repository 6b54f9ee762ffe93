"""Class labels from a synset list, so folder order never decides a label.

Supported lists: ``synsets.tsv`` (index<TAB>synset<TAB>name, optional header), ImageNet's
``synset_words.txt`` ("n01440764 tench, ...", row = label) and ``LOC_synset_mapping.txt`` (same
shape). Without a list, sorted class folder names are the labels (torchvision's rule) — but only
when that cannot be silently wrong: folders named like ImageNet synsets without their list, or a
folder count that differs from the model's classes, are refused with the fix (``--synsets FILE``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import VitoptError

LIST_NAMES = ("synsets.tsv", "synset_words.txt", "LOC_synset_mapping.txt")
SORTED = "sorted folders"
_SYNSET = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


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


def find_label_map(root: str | Path, synsets: Optional[str | Path] = None,
                   num_classes: Optional[int] = None) -> LabelMap:
    """The label map for an image folder: an explicit list, one found beside/above it, or sorted folders.

    ``num_classes``: the model's head size; a map that cannot fit it is refused (see ``check_fits``).
    """
    root = Path(root)
    if synsets:
        lm = read_synset_list(synsets)
    else:
        lm = next((read_synset_list(d / name) for d in (root, root.parent) for name in LIST_NAMES
                   if (d / name).is_file()), None)
    if lm is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise VitoptError(f"no class folders in {root} and no synset list (synsets.tsv / synset_words.txt)")
        lm = LabelMap({c: i for i, c in enumerate(classes)}, classes, SORTED)
    check_fits(lm, root, num_classes)
    return lm


def check_fits(lm: LabelMap, root: Path, num_classes: Optional[int]) -> None:
    """Refuse labels that would be silently wrong for a model with ``num_classes`` outputs."""
    n = len(lm)
    if lm.source == SORTED:
        expected = num_classes or IMAGENET_CLASSES
        if all(_SYNSET.match(c) for c in lm.names) and n != expected:
            raise VitoptError(f"the class folders of {root} are ImageNet synsets ({lm.names[0]}, ...) but no synset "
                              f"list was found beside or above it, so labels would come from the order of its {n} "
                              f"folders and be wrong for a {expected}-class model: pass --synsets FILE "
                              "(synsets.tsv or synset_words.txt)")
        if num_classes and n != num_classes:
            raise VitoptError(f"{root} has {n} class folders and no synset list, but the model has {num_classes} "
                              "classes: labels from sorted folder names would not be the model's; pass --synsets "
                              "FILE listing the model's classes in order")
    elif num_classes and n > num_classes:
        raise VitoptError(f"{lm.source} lists {n} classes but the model has {num_classes}: the labels do not fit "
                          "its head; pass --synsets FILE with the model's own class list")
