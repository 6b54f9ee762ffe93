"""Labels come from the synset list, never folder order; unreadable images are counted by name."""
import numpy as np
import pytest
import torch

from optimizer.data import build_loader, find_label_map
from optimizer.data.labels import read_synset_list
from optimizer.errors import VitoptError


def test_synsets_tsv_labels(image_folder):
    lm = find_label_map(image_folder)
    assert lm.index["n00000003"] == 3 and lm.names[4] == "class4" and len(lm) == 5


def test_synset_words_format(tmp_path):
    p = tmp_path / "synset_words.txt"
    p.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    lm = read_synset_list(p)
    assert lm.index == {"n01440764": 0, "n01443537": 1} and lm.names[0] == "tench, Tinca tinca"


def test_sorted_folder_fallback(tmp_path):
    for c in ("b", "a", "c"):
        (tmp_path / c).mkdir()
    lm = find_label_map(tmp_path)
    assert lm.index == {"a": 0, "b": 1, "c": 2} and lm.source == "sorted folders"


def test_loader_labels_and_failures(image_folder, tiny_model):
    dl = build_loader(image_folder, tiny_model, batch_size=4, workers=0)
    labels, failed, n = [], [], 0
    for b in dl:
        labels += b.labels.tolist()
        failed += b.failed
        n += b.images.shape[0]
        assert b.images.shape[1:] == (3, 32, 32)
    assert sorted(labels) == [1, 1, 3, 3, 4, 4] and n == 6
    assert len(failed) == 1 and "broken.jpg" in failed[0]


def test_unknown_class_folder_is_an_error(image_folder, tiny_model):
    (image_folder / "n99999999").mkdir()
    with pytest.raises(VitoptError, match="not in .*synsets.tsv: n99999999"):
        build_loader(image_folder, tiny_model, workers=0)


def test_bad_batch_and_missing_dir(tiny_model, tmp_path):
    with pytest.raises(VitoptError, match="batch size must be positive"):
        build_loader(tmp_path, tiny_model, batch_size=0)
    with pytest.raises(VitoptError, match="data directory not found"):
        build_loader(tmp_path / "nope", tiny_model)


def test_mini_val_label_order(mini_val):
    lm = find_label_map(mini_val)
    assert lm.index["n01440764"] == 0 and lm.index["n15075141"] == 999


@pytest.mark.parametrize("total,count", [(10, 4), (7, 7), (5, 9), (1023, 64), (3, 0)])
def test_spaced_indices_are_distinct_ascending_and_cover_the_range(total, count):
    from optimizer.data.folder import spaced_indices
    idx = spaced_indices(total, count)
    assert len(idx) == min(total, count)
    assert idx == sorted(set(idx)) and all(0 <= i < total for i in idx)
    if idx:
        # evenly spread: consecutive gaps differ by at most one, and the first image is always taken
        gaps = np.diff([*idx, total])
        assert idx[0] == 0 and gaps.max() - gaps.min() <= 1
