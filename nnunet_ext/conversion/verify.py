"""Validate a converted dataset with nnU-Net's own checks and report the case count per split."""
from __future__ import annotations

import json
import os
from typing import Dict

from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases

from .errors import IntegrityCheckError, one_line
from .splits import SPLIT_FILE

_HOW = ("nothing was written; fix the source files named above, or pass --skip-verify (verify=False) to write "
        "the dataset unchecked (not recommended)")


def _identifiers(folder: str, file_ending: str, channel_suffix: bool) -> list:
    if not os.path.isdir(folder):
        return []
    names = [f for f in os.listdir(folder) if f.endswith(file_ending) and not f.startswith(".")]
    ids = [f[:-len(file_ending)] for f in names]
    if channel_suffix:
        ids = sorted({i[:-5] for i in ids if len(i) > 5 and i[-5] == "_" and i[-4:].isdigit()})
    return sorted(ids)


def count_cases(folder: str) -> Dict[str, int]:
    """Case counts of a raw dataset: imagesTr, imagesTs, labelsTs, imagesUnlabeled (if written) and the fold-0
    split (if written)."""
    with open(os.path.join(folder, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    counts = {
        "imagesTr": len(_identifiers(os.path.join(folder, "imagesTr"), ending, True)),
        "imagesTs": len(_identifiers(os.path.join(folder, "imagesTs"), ending, True)),
        "labelsTs": len(_identifiers(os.path.join(folder, "labelsTs"), ending, False)),
    }
    if os.path.isdir(os.path.join(folder, UNLABELED_DIR)):
        counts[UNLABELED_DIR] = len(_identifiers(os.path.join(folder, UNLABELED_DIR), ending, True))
    split = os.path.join(folder, SPLIT_FILE)
    if os.path.isfile(split):
        with open(split) as f:
            fold0 = json.load(f)[0]
        counts["fold0_train"] = len(fold0["train"])
        counts["fold0_val"] = len(fold0["val"])
    return counts


def format_counts(counts: Dict[str, int]) -> str:
    """``imagesTr=10, imagesTs=4, ...`` for log output."""
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def _check_split(folder: str) -> None:
    split = os.path.join(folder, SPLIT_FILE)
    if not os.path.isfile(split):
        return
    with open(os.path.join(folder, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    train_ids = set(_identifiers(os.path.join(folder, "labelsTr"), ending, False))
    with open(split) as f:
        for fold in json.load(f):
            missing = sorted((set(fold["train"]) | set(fold["val"])) - train_ids)
            if missing:
                raise RuntimeError(f"{SPLIT_FILE} names cases without imagesTr/labelsTr files: {missing[:5]}")


def _check_test_set(folder: str) -> None:
    """Check imagesTs/labelsTs pairs with nnU-Net's per-case checks (shape, spacing, channels, labels)."""
    labels_ts = os.path.join(folder, "labelsTs")
    if not os.path.isdir(labels_ts):
        return
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    with open(os.path.join(folder, "dataset.json")) as f:
        dj = json.load(f)
    ending = dj["file_ending"]
    ids = _identifiers(os.path.join(folder, "imagesTs"), ending, True)
    label_ids = _identifiers(labels_ts, ending, False)
    if sorted(ids) != sorted(label_ids):
        raise RuntimeError(f"imagesTs and labelsTs hold different cases: only images "
                           f"{sorted(set(ids) - set(label_ids))[:5]}, "
                           f"only labels {sorted(set(label_ids) - set(ids))[:5]}")
    if not ids:
        return
    ts_files = sorted(os.listdir(os.path.join(folder, "imagesTs")))
    images = [[os.path.join(folder, "imagesTs", f) for f in ts_files
               if f.startswith(i + "_") and f.endswith(ending) and len(f) == len(i) + 5 + len(ending)]
              for i in ids]
    labels = [os.path.join(labels_ts, i + ending) for i in ids]
    rw = determine_reader_writer_from_dataset_json(dj, images[0][0], verbose=False)
    expected = LabelManager(dj["labels"], regions_class_order=dj.get("regions_class_order")).all_labels
    n_channels = len(dj["channel_names"])
    bad = [lab for im, lab in zip(images, labels)
           if not (verify_labels(lab, rw, expected) and check_cases(im, lab, n_channels, rw))]
    if bad:
        raise RuntimeError(f"test set check failed for {bad[:5]} (see messages above)")


def _check_unlabeled(folder: str) -> None:
    """imagesUnlabeled (if written): every file named like imagesTr, with the channels dataset.json names."""
    if not os.path.isdir(os.path.join(folder, UNLABELED_DIR)):
        return
    with open(os.path.join(folder, "dataset.json")) as f:
        dj = json.load(f)
    _, problems = unlabeled_cases(folder, dj)
    if problems:
        name, why = sorted(problems.items())[0]
        raise RuntimeError(f"{UNLABELED_DIR}: {name} {why} ({len(problems)} problem(s))")


def verify_output(folder: str, num_processes: int = 2) -> Dict[str, int]:
    """Run nnU-Net's ``verify_dataset_integrity`` on imagesTr/labelsTr, the same per-case checks on
    imagesTs/labelsTs, check the split's case ids and the naming of imagesUnlabeled, and return
    :func:`count_cases`.

    Raises :class:`IntegrityCheckError` (a ``RuntimeError``, chained to nnU-Net's error) when a check fails.
    """
    counts = count_cases(folder)
    if counts["imagesTr"] > 0:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
        try:
            verify_dataset_integrity(folder, num_processes=max(1, min(int(num_processes), counts["imagesTr"])))
        except Exception as e:  # nnU-Net raises AssertionError / RuntimeError
            raise IntegrityCheckError(f"nnU-Net's dataset integrity check failed for the converted dataset: "
                                      f"{one_line(e)}; {_HOW}") from e
    try:
        _check_test_set(folder)
        _check_split(folder)
        _check_unlabeled(folder)
    except Exception as e:
        raise IntegrityCheckError(f"check of the converted dataset failed: {one_line(e)}; {_HOW}") from e
    return counts
