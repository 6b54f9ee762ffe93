"""benchmarks/reconstruct.py's row cache: a finished row is not recomputed; a changed row is."""


def _specs():
    return {"a": {"steps": [{"method": "slim", "macs_ratio": 0.75, "recovery": "none"}]},
            "b": {"steps": [{"method": "lowrank", "params_ratio": 0.75, "recovery": "default"}]}}


def test_finished_rows_are_read_back_not_recomputed(tmp_path):
    from reconstruct import run_rows
    calls = []

    def compute(name, spec):
        calls.append(name)
        return {"agreement": len(calls)}
    ctx = {"images": 64}
    first = run_rows(["a", "b"], _specs(), compute, tmp_path, ctx, log=lambda s: None)
    again = run_rows(["a", "b"], _specs(), compute, tmp_path, ctx, log=lambda s: None)
    assert calls == ["a", "b"]
    assert again == first == {"a": {"agreement": 1}, "b": {"agreement": 2}}


def test_a_row_with_other_configs_or_images_is_recomputed(tmp_path):
    from reconstruct import run_rows
    calls = []

    def compute(name, spec):
        calls.append(name)
        return {"n": len(calls)}
    run_rows(["a", "b"], _specs(), compute, tmp_path, {"images": 64}, log=lambda s: None)
    specs = _specs()
    specs["a"]["steps"][0]["macs_ratio"] = 0.5
    run_rows(["a", "b"], specs, compute, tmp_path, {"images": 64}, log=lambda s: None)
    run_rows(["b"], specs, compute, tmp_path, {"images": 128}, log=lambda s: None)
    assert calls == ["a", "b", "a", "b"]


def test_a_killed_row_leaves_the_finished_ones_cached(tmp_path):
    import pytest
    from reconstruct import run_rows
    calls = []

    def compute(name, spec):
        calls.append(name)
        if name == "b" and calls.count("b") == 1:
            raise KeyboardInterrupt   # killed while computing b
        return {"ok": name}
    with pytest.raises(KeyboardInterrupt):
        run_rows(["a", "b"], _specs(), compute, tmp_path, {}, log=lambda s: None)
    out = run_rows(["a", "b"], _specs(), compute, tmp_path, {}, log=lambda s: None)
    assert calls == ["a", "b", "b"] and out == {"a": {"ok": "a"}, "b": {"ok": "b"}}


def test_default_fine_tune_is_spelled_out_in_the_key():
    from reconstruct import fine_tune_options, resolve_steps
    steps = resolve_steps([{"method": "lowrank", "params_ratio": 0.75, "recovery": "default"}])
    assert steps[0]["recovery"] == fine_tune_options()
    assert fine_tune_options()["loss"] != "none" and fine_tune_options()["epochs"] > 0


def test_calibration_subset_is_a_seeded_sample_with_labels(image_folder, tmp_path):
    from reconstruct import calibration_folder
    from optimizer.data.folder import ImageFolderData
    full = ImageFolderData(image_folder, None)
    assert calibration_folder(str(image_folder), None, 0, tmp_path) == str(image_folder)
    assert calibration_folder(str(image_folder), len(full), 0, tmp_path) == str(image_folder)
    sub = calibration_folder(str(image_folder), 3, 0, tmp_path / "a")
    again = calibration_folder(str(image_folder), 3, 0, tmp_path / "b")
    part = ImageFolderData(sub, None)
    names = lambda d: sorted((p.parent.name, p.name) for p, _ in d.samples)
    assert len(part) == 3 and names(part) == names(ImageFolderData(again, None))
    # labels resolve through the synset list beside the original folder, as for the full one
    label = {(p.parent.name, p.name): y for p, y in full.samples}
    assert all(label[(p.parent.name, p.name)] == y for p, y in part.samples)
