"""Iterative pseudo-labels: the stability filter (Dice between two rounds' pseudo-labels) on hand-made label maps,
its combination with the uncertainty filter, and the refusal of a previous round of another dataset. End to end
(with a trained model): tests/test_cps.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cps.pseudo_label import PseudoLabelError, add_stability, choose, previous_round, stability

LABELS = {"background": 0, "a": 1, "b": 2}
DS_JSON = {"file_ending": ".nii.gz", "labels": LABELS, "channel_names": {"0": "CT"}}


def _write(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8)), str(path))


def _blob(shift: int = 0) -> np.ndarray:
    a = np.zeros((6, 10, 10), dtype=np.uint8)
    a[1:5, 2 + shift:6 + shift, 2:6] = 1
    a[2:4, 7:9, 6:9] = 2
    return a


def test_stability_is_mean_foreground_dice():
    a = _blob()
    assert stability(a, a, [1, 2]) == 1.0
    assert stability(np.zeros_like(a), np.zeros_like(a), [1, 2]) == 1.0  # nothing in either: unchanged
    b = a.copy()
    b[b == 2] = 0  # class 2 lost: Dice 0 for it, 1 for class 1
    assert stability(a, b, [1, 2]) == pytest.approx(0.5)
    c = _blob(shift=2)  # class 1 moved by half its width: overlap 2 of 4 columns
    assert stability(a, c, [1]) == pytest.approx(0.5)


def test_choose_combines_uncertainty_and_stability():
    records = {
        "certain_stable": {"uncertainty": 0.1, "foreground_voxels": 10, "stability": 0.95},
        "certain_changed": {"uncertainty": 0.1, "foreground_voxels": 10, "stability": 0.4},
        "certain_missing": {"uncertainty": 0.2, "foreground_voxels": 10, "stability": None},
        "uncertain_stable": {"uncertainty": 0.9, "foreground_voxels": 10, "stability": 1.0},
        "empty": {"uncertainty": 0.0, "foreground_voxels": 0, "stability": 1.0},
        "broken": {"skipped": "unreadable"},
    }
    assert choose(records, 0.6, None, 0.9) == ["certain_stable"]  # 3 of 5 most certain, then stable ones
    assert choose(records, 1.0, None, 0.9) == ["certain_stable", "uncertain_stable"]
    assert choose(records, 1.0, None, None) == ["certain_changed", "certain_missing", "certain_stable",
                                               "uncertain_stable"]


def _round(tmp_path, cases):
    """A cache of this round's predictions and the records predict_unlabeled would give."""
    cache = tmp_path / "cache"
    for c, arr in cases.items():
        _write(cache / f"{c}.nii.gz", arr)
    return cache, {c: {"file": f"{c}.nii.gz", "uncertainty": 0.1, "foreground_voxels": int((arr > 0).sum())}
                   for c, arr in cases.items()}


def test_stable_case_kept_changed_case_dropped_missing_case_named(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    cache, records = _round(tmp_path, {"stable": _blob(), "changed": _blob(), "new": _blob()})
    prev = tmp_path / "Dataset010_PhantomPL"  # a previous round written by pseudo-label: kept ones in labelsTr
    _write(prev / "labelsTr" / "stable.nii.gz", _blob())
    _write(prev / "labelsTr" / "labelled_case.nii.gz", _blob())
    changed = _blob()
    changed[changed == 2] = 0
    changed[changed == 1] = 2  # the organ changed class
    old_cache = tmp_path / "old_cache"  # ... and every case it predicted in the cache it names
    _write(old_cache / "changed.nii.gz", changed)
    (prev / "dataset.json").write_text(json.dumps(dict(DS_JSON, pseudo_labels={
        "source": "Dataset009_Phantom", "origin": "Dataset009_Phantom", "predictions": str(old_cache)})))
    src_json = dict(DS_JSON, pseudo_labels={"source": "Dataset009_Phantom"})
    found = previous_round(str(prev), "Dataset010_PhantomPL", src_json, list(records), tmp_path)
    assert sorted(found) == ["changed", "stable"]
    missing = add_stability(records, cache, found, [1, 2], SimpleITKIO(), str(prev))
    assert missing == ["new"] and records["new"]["stability"] is None
    assert records["stable"]["stability"] == 1.0 and records["changed"]["stability"] == 0.0
    assert choose(records, 1.0, None, 0.9) == ["stable"]
    # the same folder of plain label files (e.g. nnUNetv2_predict's output)
    plain = tmp_path / "plain"
    _write(plain / "stable.nii.gz", _blob(shift=1))
    found = previous_round(str(plain), "Dataset009_Phantom", DS_JSON, list(records), tmp_path)
    assert list(found) == ["stable"]
    add_stability(records, cache, found, [1, 2], SimpleITKIO(), str(plain))
    assert 0.5 < records["stable"]["stability"] < 1


def test_previous_round_of_another_dataset_is_refused(tmp_path):
    cases = ["case_a", "case_b"]
    other_labels = tmp_path / "Dataset020_Other"
    _write(other_labels / "labelsTr" / "case_a.nii.gz", _blob())
    (other_labels / "dataset.json").write_text(json.dumps(dict(DS_JSON, labels={"background": 0, "liver": 1})))
    with pytest.raises(PseudoLabelError, match="another dataset") as e:
        previous_round(str(other_labels), "Dataset009_Phantom", DS_JSON, cases, tmp_path)
    assert "\n" not in str(e.value)
    other_source = tmp_path / "Dataset021_OtherPL"
    _write(other_source / "labelsTr" / "case_a.nii.gz", _blob())
    (other_source / "dataset.json").write_text(json.dumps(dict(DS_JSON, pseudo_labels={"source": "Dataset008_X"})))
    with pytest.raises(PseudoLabelError, match="pseudo-labels of Dataset008_X, not of Dataset009_Phantom"):
        previous_round(str(other_source), "Dataset009_Phantom", DS_JSON, cases, tmp_path)
    no_cases = tmp_path / "no_cases"
    _write(no_cases / "someone_else.nii.gz", _blob())
    with pytest.raises(PseudoLabelError, match="holds none of the 2 unlabelled case"):
        previous_round(str(no_cases), "Dataset009_Phantom", DS_JSON, cases, tmp_path)
    with pytest.raises(PseudoLabelError, match="not a folder"):
        previous_round(str(tmp_path / "nowhere"), "Dataset009_Phantom", DS_JSON, cases, tmp_path)


def test_previous_round_of_another_shape_is_refused(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    cache, records = _round(tmp_path, {"case_a": _blob()})
    prev = tmp_path / "prev"
    _write(prev / "case_a.nii.gz", np.zeros((3, 4, 5)))
    found = previous_round(str(prev), "Dataset009_Phantom", DS_JSON, list(records), tmp_path)
    with pytest.raises(PseudoLabelError, match="has shape .* another dataset"):
        add_stability(records, cache, found, [1, 2], SimpleITKIO(), str(prev))
    (prev / "case_a.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(PseudoLabelError, match="case_a.nii.gz is unreadable") as e:
        add_stability(records, cache, found, [1, 2], SimpleITKIO(), str(prev))
    assert "\n" not in str(e.value)
