"""The steps every converter shares: write cases in parallel into a temporary folder, write
dataset.json and the split, validate with nnU-Net's checks, then move the folder into place.

A converter only has to (1) read and validate its source layout into a list of :class:`Case` and
(2) provide a module-level *writer* ``writer(case, images_dir, labels_dir) -> label values`` that
writes ``<images_dir>/<case_id>_0000<ending>`` (more channels: ``_0001`` ...) and
``<labels_dir>/<case_id><ending>``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import SourceLayoutError
from .parallel import run_parallel
from .splits import write_split
from .target import atomic_folder, check_target, dataset_folder_name, resolve_raw_root
from .verify import format_counts, verify_output


@dataclass
class Case:
    """One case to convert.

    ``train``: written to imagesTr/labelsTr; ``test``: written to imagesTs/labelsTs (copied from the
    training files when both are set). ``source`` is the converter's picklable description of where
    the case comes from (paths, slice lists...).
    """

    case_id: str
    source: Any
    train: bool = True
    test: bool = False


@dataclass
class DatasetInfo:
    """What goes into dataset.json besides the case count."""

    channel_names: Dict[str, str]
    labels: Dict[str, int]
    file_ending: str
    name: str = ""
    description: str = ""
    reference: str = ""
    licence: str = "see the dataset's original licence (nnunet_ext README, section Datasets)"
    extra: Dict[str, Any] = field(default_factory=dict)


def prepare_target(dataset_id: int, name: str, raw_root: Optional[str], overwrite: bool,
                   sources: Iterable[str] = ()) -> str:
    """Resolve and check the target folder before any work is done (fails fast).

    Also refuses a target that is, contains or lies inside one of the ``sources`` (a converter never
    writes into or deletes its source).
    """
    target = check_target(resolve_raw_root(raw_root), dataset_folder_name(dataset_id, name), overwrite)
    t = os.path.realpath(target)
    for s in sources:
        s = os.path.realpath(s)
        if t == s or t.startswith(s + os.sep) or s.startswith(t + os.sep):
            raise ValueError(f"target {target} overlaps the source {s}; choose another --output")
    return target


def _write_one(job):
    writer, case, images_dir, labels_dir = job
    try:
        values = writer(case, images_dir, labels_dir)
    except (SourceLayoutError, FileNotFoundError):
        raise
    except Exception as e:
        raise RuntimeError(f"converting case {case.case_id!r} from {case.source!r} failed: {e}") from e
    return case.case_id, values


def _copy_case(case_id: str, ending: str, src_images: str, src_labels: str, dst_images: str, dst_labels: str):
    for f in os.listdir(src_images):
        if f.startswith(case_id + "_") and f.endswith(ending) and len(f) == len(case_id) + 5 + len(ending):
            shutil.copyfile(os.path.join(src_images, f), os.path.join(dst_images, f))
    shutil.copyfile(os.path.join(src_labels, case_id + ending), os.path.join(dst_labels, case_id + ending))


def build_dataset(converter: str, target: str, cases: List[Case], writer: Callable, info: DatasetInfo,
                  fold0: Optional[dict] = None, num_processes: int = 2, overwrite: bool = False,
                  verify: bool = True) -> str:
    """Write ``cases`` with ``writer`` into ``target`` atomically and return ``target``.

    ``fold0`` ({"train": [...], "val": [...]}) is written as ``splits_final.json``. With ``verify``
    the result is checked with nnU-Net's integrity check before it is moved into place.
    """
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ValueError(f"{converter}: duplicate case ids {dupes[:5]}")
    if not cases:
        raise ValueError(f"{converter}: no cases to convert")
    ending = info.file_ending
    allowed = set(int(v) for v in info.labels.values())
    with atomic_folder(target, overwrite) as tmp:
        d = {k: os.path.join(tmp, k) for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        os.makedirs(d["imagesTr"])
        os.makedirs(d["labelsTr"])
        if any(c.test for c in cases):
            os.makedirs(d["imagesTs"])
            os.makedirs(d["labelsTs"])
        jobs = [(writer, c, d["imagesTr"] if c.train else d["imagesTs"], d["labelsTr"] if c.train else d["labelsTs"])
                for c in cases]
        results = run_parallel(_write_one, jobs, num_processes, desc=f"{converter}: writing cases")
        for case_id, values in results:
            bad = sorted(set(int(v) for v in (values or [])) - allowed)
            if bad:
                raise ValueError(f"{converter}: case {case_id!r} has label values {bad} that dataset.json does "
                                 f"not define ({info.labels})")
        for c in cases:
            if c.train and c.test:
                _copy_case(c.case_id, ending, d["imagesTr"], d["labelsTr"], d["imagesTs"], d["labelsTs"])

        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        n_train = sum(c.train for c in cases)
        extra = dict(info.extra)
        extra["numTest"] = sum(c.test for c in cases)
        if info.description:
            extra["description"] = info.description
        if info.reference:
            extra["reference"] = info.reference
        generate_dataset_json(tmp, dict(info.channel_names), dict(info.labels), n_train, ending,
                              dataset_name=info.name or os.path.basename(target), license=info.licence,
                              converted_by=f"nnunet_ext.conversion ({converter})", **extra)
        if fold0 is not None:
            write_split(tmp, fold0)
        if verify:
            counts = verify_output(tmp, num_processes)
        else:
            from .verify import count_cases
            counts = count_cases(tmp)
    print(f"{converter}: wrote {target} ({format_counts(counts)})"
          + ("" if verify else " [integrity check skipped]"))
    return target
