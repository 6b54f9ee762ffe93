"""Labels that would be silently wrong are refused with the fix; labels that fit pass."""
from __future__ import annotations

import pytest

from optimizer.data.labels import SORTED, find_label_map
from optimizer.errors import VitoptError


def _folders(root, names):
    for n in names:
        (root / n).mkdir(parents=True)
    return root


@pytest.mark.parametrize("names,num_classes,needle", [
    (["n01440764", "n01443537", "n01484850"], None, "are ImageNet synsets"),
    (["n01440764", "n01443537", "n01484850"], 1000, "are ImageNet synsets"),
    (["cat", "dog", "fish"], 1000, "has 3 class folders and no synset list, but the model has 1000"),
])
def test_sorted_fallback_that_cannot_be_the_models_labels(tmp_path, names, num_classes, needle):
    root = _folders(tmp_path / "imgs", names)
    with pytest.raises(VitoptError, match=needle) as e:
        find_label_map(root, num_classes=num_classes)
    assert "pass --synsets FILE" in str(e.value)


def test_synset_list_longer_than_the_head(tmp_path):
    root = _folders(tmp_path / "imgs", ["n00000001"])
    (tmp_path / "synsets.tsv").write_text("".join(f"{i}\tn0000000{i}\tc{i}\n" for i in range(12)))
    with pytest.raises(VitoptError, match="lists 12 classes but the model has 10"):
        find_label_map(root, num_classes=10)
    assert len(find_label_map(root, num_classes=1000)) == 12     # a subset of the head is fine


def test_fallback_that_fits_the_head(tmp_path):
    root = _folders(tmp_path / "imgs", ["b", "a", "c"])
    lm = find_label_map(root, num_classes=3)
    assert lm.source == SORTED and lm.index == {"a": 0, "b": 1, "c": 2}
