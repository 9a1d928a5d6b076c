"""The steps every converter shares: write cases in parallel into a temporary folder, write
dataset.json and the split, validate with nnU-Net's checks, then move the folder into place.

A converter only has to (1) read and validate its source layout into a list of :class:`Case` and
(2) provide a module-level *writer* ``writer(case, images_dir, labels_dir) -> label values`` that
writes ``<images_dir>/<case_id>_0000<ending>`` (more channels: ``_0001`` ...) and
``<labels_dir>/<case_id><ending>``. For a case without label (``Case.unlabeled``) ``labels_dir`` is
None and the writer writes the images only (and returns no label values).

Images without labels go to ``imagesUnlabeled/`` (named like imagesTr, read by
``nnunet-ext preprocess-unlabeled`` and the CPS trainers; see :mod:`nnunet_ext.unlabeled.raw`), or,
for test cases, to ``imagesTs/`` without ``labelsTs/``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from nnunet_ext.errors import UserError
from nnunet_ext.unlabeled.raw import UNLABELED_DIR

from .errors import BadCaseError, CaseDataError, ConversionArgumentError
from .parallel import run_parallel
from .splits import write_split
from .target import atomic_folder, check_target, dataset_folder_name, resolve_raw_root
from .verify import format_counts, verify_output


@dataclass
class Case:
    """One case to convert.

    ``train``: written to imagesTr/labelsTr; ``test``: written to imagesTs/labelsTs (copied from the
    training files when both are set). ``unlabeled``: the case has no label: written to
    imagesUnlabeled (with ``test``: to imagesTs, and no labelsTs is written); it cannot be a training
    case (pass ``train=False``). ``source`` is the converter's picklable description of where the case
    comes from (paths, slice lists...).
    """

    case_id: str
    source: Any
    train: bool = True
    test: bool = False
    unlabeled: bool = False


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
            raise ConversionArgumentError(f"target {target} overlaps the source {s}; choose another --output")
    return target


def source_file(case: Case) -> str:
    """The source file (or folder) a case's label comes from, for messages."""
    src = case.source
    if isinstance(src, dict):
        for k in ("label", "mask", "path", "image"):
            if src.get(k):
                return str(src[k])
        if src.get("paths"):
            return os.path.dirname(str(src["paths"][0]))
    if isinstance(src, (tuple, list)) and src:
        return str(src[-1])
    return repr(src)


def _write_one(job):
    writer, case, images_dir, labels_dir, labels, skip_bad = job
    try:
        values = writer(case, images_dir, labels_dir)
        bad = sorted(set(int(v) for v in (values or [])) - set(int(v) for v in labels.values()))
        if bad:
            raise CaseDataError(source_file(case), f"label values {bad} that dataset.json does not define "
                                f"({labels})", fix="pass the right label names (e.g. --label-names) or fix the file")
    except BadCaseError as e:
        e = e.with_case(case.case_id)
        if skip_bad:
            return case.case_id, None, {"case": case.case_id, "file": e.path, "reason": e.reason}
        raise e
    except UserError:
        raise
    except Exception as e:  # a bug, not a property of the source: keep the details
        raise RuntimeError(f"converting case {case.case_id!r} from {case.source!r} failed: {e}") from e
    return case.case_id, values, None


def _remove_case(case_id: str, ending: str, images_dir: str, labels_dir: Optional[str]) -> None:
    """Remove whatever a failed (skipped) case left in images_dir / labels_dir (None: images only)."""
    for f in os.listdir(images_dir):
        if f.startswith(case_id + "_") and f.endswith(ending) and len(f) == len(case_id) + 5 + len(ending):
            os.remove(os.path.join(images_dir, f))
    lab = os.path.join(labels_dir, case_id + ending) if labels_dir else None
    if lab and os.path.exists(lab):
        os.remove(lab)


def _copy_case(case_id: str, ending: str, src_images: str, src_labels: str, dst_images: str, dst_labels: str):
    for f in os.listdir(src_images):
        if f.startswith(case_id + "_") and f.endswith(ending) and len(f) == len(case_id) + 5 + len(ending):
            shutil.copyfile(os.path.join(src_images, f), os.path.join(dst_images, f))
    shutil.copyfile(os.path.join(src_labels, case_id + ending), os.path.join(dst_labels, case_id + ending))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check_unlabeled(converter: str, cases: List[Case]) -> None:
    """Cases without label: never training cases; a test set is either all labelled or all unlabelled."""
    bad = [c.case_id for c in cases if c.unlabeled and c.train]
    if bad:
        raise ConversionArgumentError(f"{converter}: cases without label cannot be training cases: {bad[:5]}")
    test_kinds = {c.unlabeled for c in cases if c.test}
    if len(test_kinds) > 1:
        raise ConversionArgumentError(f"{converter}: the test set mixes cases with and without label (imagesTs "
                                      "and labelsTs must hold the same cases)")


def _folders(cases: List[Case], d: Dict[str, str]) -> Dict[str, tuple]:
    """case id -> (images folder, labels folder or None) in the temporary dataset folder."""
    def where(c: Case) -> tuple:
        if c.train:
            return d["imagesTr"], d["labelsTr"]
        if c.unlabeled:
            return (d["imagesTs"], None) if c.test else (d[UNLABELED_DIR], None)
        return d["imagesTs"], d["labelsTs"]
    return {c.case_id: where(c) for c in cases}


def build_dataset(converter: str, target: str, cases: List[Case], writer: Callable, info: DatasetInfo,
                  fold0: Optional[dict] = None, num_processes: int = 2, overwrite: bool = False,
                  verify: bool = True, skip_bad: bool = False, summary: Sequence[str] = ()) -> str:
    """Write ``cases`` with ``writer`` into ``target`` atomically and return ``target``.

    ``fold0`` ({"train": [...], "val": [...]}) is written as ``splits_final.json``. With ``verify``
    the result is checked with nnU-Net's integrity check before it is moved into place.

    A case whose file cannot be read or whose data do not fit
    (:class:`~nnunet_ext.conversion.errors.BadCaseError`) stops the conversion and nothing is written;
    with ``skip_bad`` it is left out instead (and out of the split), and listed in the printed
    summary and in ``dataset.json`` as ``skipped_cases`` ([{"case", "file", "reason"}]).
    ``summary``: lines the converter adds to the printed summary (which lists were used, ...).
    """
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ConversionArgumentError(f"{converter}: duplicate case ids {dupes[:5]}; each case may occur once in "
                                      "the source (check the list files)")
    if not cases:
        raise ConversionArgumentError(f"{converter}: no cases to convert; check --source and the list files")
    _check_unlabeled(converter, cases)
    ending = info.file_ending
    labels = {str(k): int(v) for k, v in info.labels.items()}
    with atomic_folder(target, overwrite) as tmp:
        d = {k: os.path.join(tmp, k) for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", UNLABELED_DIR)}
        where = _folders(cases, d)
        os.makedirs(d["imagesTr"])
        os.makedirs(d["labelsTr"])
        if any(c.test for c in cases):
            os.makedirs(d["imagesTs"])
            if not all(c.unlabeled for c in cases if c.test):
                os.makedirs(d["labelsTs"])
        if any(c.unlabeled and not c.test for c in cases):
            os.makedirs(d[UNLABELED_DIR])
        jobs = [(writer, c, *where[c.case_id], labels, skip_bad) for c in cases]
        results = run_parallel(_write_one, jobs, num_processes, desc=f"{converter}: writing cases")
        skipped = [r[2] for r in results if r[2] is not None]
        if skipped:
            for s in skipped:
                _remove_case(s["case"], ending, *where[s["case"]])
            if len(skipped) == len(cases):
                raise ConversionArgumentError(
                    f"{converter}: all {len(cases)} cases were skipped (--skip-bad), e.g. {skipped[0]['case']!r}: "
                    f"{skipped[0]['file']}: {skipped[0]['reason']}; nothing was written")
            gone = {s["case"] for s in skipped}
            cases = [c for c in cases if c.case_id not in gone]
            if fold0 is not None:
                fold0 = {k: [c for c in v if c not in gone] for k, v in fold0.items()}
                if not fold0["train"] or not fold0["val"]:
                    summary = list(summary) + ["no splits_final.json written: the skipped cases emptied the "
                                               f"fold-0 {'training' if not fold0['train'] else 'validation'} set"]
                    fold0 = None
        for c in cases:
            if c.train and c.test:
                _copy_case(c.case_id, ending, d["imagesTr"], d["labelsTr"], d["imagesTs"], d["labelsTs"])

        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        n_train = sum(c.train for c in cases)
        extra = dict(info.extra)
        extra["numTest"] = sum(c.test for c in cases)
        n_unlabeled = sum(c.unlabeled and not c.test for c in cases)
        if n_unlabeled:
            extra["numUnlabeled"] = n_unlabeled
        description = info.description
        if skipped:
            description += (f"; {_plural(len(skipped), 'case')} skipped because of unreadable or unusable files "
                            "(see skipped_cases)")
        if description:
            extra["description"] = description
        if info.reference:
            extra["reference"] = info.reference
        if skip_bad:
            extra["skipped_cases"] = skipped
        generate_dataset_json(tmp, dict(info.channel_names), dict(labels), n_train, ending,
                              dataset_name=info.name or os.path.basename(target), license=info.licence,
                              converted_by=f"nnunet_ext.conversion ({converter})", **extra)
        if fold0 is not None:
            write_split(tmp, fold0)
        if verify:
            counts = verify_output(tmp, num_processes)
        else:
            from .verify import count_cases
            counts = count_cases(tmp)
    print(f"{converter}: {_plural(len(cases), 'case')} converted ({format_counts(counts)})"
          + ("" if verify else " [integrity check skipped]"))
    for line in summary:
        print(f"{converter}: {line}")
    if skipped:
        print(f"{converter}: skipped {_plural(len(skipped), 'case')} (--skip-bad; listed in dataset.json "
              "'skipped_cases'):")
        for s in skipped:
            print(f"    {s['case']}: {s['file']}: {s['reason']}")
    return target
