"""GMS (Generative Medical Segmentation, Huo et al. 2024) dataset layout: BUS, BUSI, GlaS, HAM10000,
Kvasir-Instrument.

Supported source layout (one dataset folder, as in the GMS repository's ``Dataset/`` folder)::

    <source>/                       e.g. Dataset/busi
        <prefix>_train_test_names.pkl   exactly one such file (kvasir-instrument: kvasir_train_test_names.pkl)
        images/<name>.png
        masks/<name>.png            same file name as the image

``--source`` may also be a folder above the dataset folder (a nested release folder) when exactly
one dataset folder lies up to two levels below it; 'images' / 'masks' may be spelt in any case, and
images and masks may be .png, .jpg, .bmp or .tif (masks may also be named ``<name>_mask.<ext>``).

The pickle holds the published split: a dict with keys ``'train'`` and ``'test'``; each value is
either a list of names or (as in the GMS release) a dict ``{'name_list': [...]}``. Names may be given
with or without the file extension. Masks are binarised at ``> 127``.

Result: all cases in imagesTr/labelsTr, ``splits_final.json`` fold 0 = (pkl train, pkl test), and
the test cases also in imagesTs/labelsTs (see :mod:`nnunet_ext.conversion.splits`; with
``holdout_test`` the test cases are only in imagesTs). BUSI's ``normal_*`` images (no lesion, empty
masks) are excluded unless ``include_normal`` (GMS excluded them).
"""
from __future__ import annotations

import os
import pickle
from typing import Dict, List, Optional

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import SourceLayoutError
from .layout import describe_folder, child_dir, find_file, find_nested, list_files, require_source, strip_suffix
from .natural import channel_names, decide_rgb, safe_case_id, write_natural_case
from .splits import SplitPlan

_NAME = "gms"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: folder name -> (nnU-Net dataset name, foreground label name, default colour mode)
KNOWN = {
    "bus": ("BUS", "lesion", "grey"),
    "busi": ("BUSI", "lesion", "grey"),
    "glas": ("GlaS", "gland", "rgb"),
    "ham10000": ("HAM10000", "lesion", "rgb"),
    "kvasir-instrument": ("KvasirInstrument", "instrument", "rgb"),
}


def _load_pickle(path: str) -> Dict[str, List[str]]:
    expected = "a dict with keys 'train' and 'test', each a list of image names or {'name_list': [...]}"
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as e:
        raise SourceLayoutError(_NAME, expected, f"a file that cannot be unpickled ({e})", path) from e
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        found = f"keys {sorted(map(str, data))}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise SourceLayoutError(_NAME, expected, found, path)
    out = {}
    for part in ("train", "test"):
        v = data[part]
        if isinstance(v, dict) and "name_list" in v:
            v = v["name_list"]
        if not isinstance(v, (list, tuple)) or not all(isinstance(n, str) for n in v):
            raise SourceLayoutError(_NAME, expected, f"{part!r} is a {type(v).__name__}", path)
        out[part] = [str(n) for n in v]
    return out


def _pkls(folder: str) -> List[str]:
    try:
        return sorted(f for f in os.listdir(folder) if f.endswith("_train_test_names.pkl") and not f.startswith("."))
    except OSError:
        return []


def _find_dataset_folder(source: str) -> str:
    """``source`` if it holds a ``*_train_test_names.pkl``, else the one folder up to two levels below that does."""
    if _pkls(source):
        return source
    hits = find_nested(source, lambda d: bool(_pkls(d)), max_depth=2)
    expected = "a GMS dataset folder with images/, masks/ and one <name>_train_test_names.pkl"
    if not hits:
        raise SourceLayoutError(_NAME, expected, f"0 *_train_test_names.pkl files here or in the folders below; the "
                                f"folder contains {describe_folder(source)}", source)
    if len(hits) > 1:
        raise SourceLayoutError(_NAME, expected, f"{len(hits)} dataset folders "
                                f"{[os.path.relpath(h, source) for h in hits][:6]}; pass the one to convert as "
                                "--source (e.g. Dataset/busi)", source)
    return hits[0]


def _resolve(name: str, folder: str, files: set) -> Optional[str]:
    """The file in ``folder`` for a pkl name given with or without extension."""
    if name in files:
        return os.path.join(folder, name)
    return find_file(folder, strip_suffix(name, IMAGE_SUFFIXES), IMAGE_SUFFIXES)


def convert_gms(source: str, dataset_id: int, name: Optional[str] = None, raw_root: Optional[str] = None,
                overwrite: bool = False, num_processes: int = 2, include_normal: bool = False,
                color: Optional[str] = None, label_name: Optional[str] = None, holdout_test: bool = False,
                verify: bool = True, skip_bad: bool = False) -> str:
    """Convert one GMS dataset folder (``bus``, ``busi``, ``glas``, ``ham10000``, ``kvasir-instrument``).

    ``name`` defaults to BUS/BUSI/GlaS/HAM10000/KvasirInstrument (else the folder name); ``color``
    ('auto', 'rgb', 'grey') defaults to grey for the ultrasound sets and RGB otherwise;
    ``label_name`` names label 1 (default lesion/gland/instrument). ``skip_bad``: skip cases whose
    files cannot be read. Returns the dataset folder.
    """
    given = require_source(_NAME, source)
    source = _find_dataset_folder(given)
    folder_key = os.path.basename(os.path.normpath(source)).lower()
    known = KNOWN.get(folder_key, (safe_case_id(os.path.basename(source)), "foreground", "auto"))
    expected = ("a GMS dataset folder with images/, masks/ and one <name>_train_test_names.pkl")
    pkls = _pkls(source)
    if len(pkls) != 1:
        raise SourceLayoutError(_NAME, expected, f"{len(pkls)} *_train_test_names.pkl files {sorted(pkls)}", source)
    pkl_path = os.path.join(source, pkls[0])
    img_dir = child_dir(source, "images") or os.path.join(source, "images")
    mask_dir = child_dir(source, "masks") or os.path.join(source, "masks")
    img_files = set(list_files(_NAME, img_dir, IMAGE_SUFFIXES, "a folder 'images' with the images"))
    mask_files = set(list_files(_NAME, mask_dir, IMAGE_SUFFIXES, "a folder 'masks' with one mask per image"))
    split = _load_pickle(pkl_path)

    is_busi = "busi" in folder_key
    parts: Dict[str, List[str]] = {}
    cases_src = {}
    dropped = 0
    for part in ("train", "test"):
        names = split[part]
        if is_busi and not include_normal:
            kept = [n for n in names if not os.path.basename(n).lower().startswith("normal")]
            dropped += len(names) - len(kept)
            names = kept
        missing = [n for n in names if _resolve(n, img_dir, img_files) is None]
        if missing:
            raise SourceLayoutError(_NAME, f"an image in images/ for every {part!r} name of {pkls[0]} "
                                    "(with or without extension)",
                                    f"{len(missing)} names without image, e.g. {missing[:3]}", pkl_path)
        ids = []
        for n in names:
            image = _resolve(n, img_dir, img_files)
            stem = strip_suffix(os.path.basename(image), IMAGE_SUFFIXES)
            mask = _resolve(os.path.basename(image), mask_dir, mask_files) or \
                find_file(mask_dir, stem + "_mask", IMAGE_SUFFIXES)
            if mask is None:
                raise SourceLayoutError(_NAME, "a mask in masks/ with the same name as each image",
                                        f"no mask for {os.path.basename(image)!r}", mask_dir)
            cid = safe_case_id(stem)
            if cid in cases_src:
                raise SourceLayoutError(_NAME, "each name once in the pkl (train and test disjoint)",
                                        f"{n!r} twice (case id {cid!r})", pkl_path)
            cases_src[cid] = (image, mask)
            ids.append(cid)
        parts[part] = ids
    if dropped:
        print(f"{_NAME}: excluded {dropped} 'normal' images (pass include_normal / --include-normal to keep them)")

    plan = SplitPlan(parts["train"], test=parts["test"], holdout_test=holdout_test)
    rgb = decide_rgb(color or known[2], [v[0] for v in cases_src.values()])
    ds_name = name or known[0]
    target = prepare_target(dataset_id, ds_name, raw_root, overwrite, [given])
    in_tr = set(plan.training_cases())
    in_ts = set(plan.test)
    cases = [Case(cid, {"image": im, "mask": m, "rgb": rgb, "threshold": 127}, cid in in_tr, cid in in_ts)
             for cid, (im, m) in sorted(cases_src.items())]
    info = DatasetInfo(channel_names=channel_names(rgb), labels={"background": 0, label_name or known[1]: 1},
                       file_ending=".png", name=ds_name,
                       description=f"{ds_name} in the GMS layout ({pkls[0]}); {plan.describe()}",
                       reference="Huo et al., Generative Medical Segmentation (GMS), AAAI 2025",
                       extra={"split": plan.describe()})
    summary = ([] if source == given else [f"dataset folder {source}"]) + \
        [f"split from {pkl_path}: {len(parts['train'])} train / {len(parts['test'])} test"]
    return build_dataset(_NAME, target, cases, write_natural_case, info, plan.fold0(), num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def _add_args(p):
    p.add_argument("--include-normal", action="store_true",
                   help="BUSI: keep the 'normal_*' images (empty masks); GMS excluded them (default)")
    p.add_argument("--color", choices=["auto", "rgb", "grey"], default=None,
                   help="write images as RGB (3 channels) or grey (1 channel); "
                        "default: grey for bus/busi, rgb otherwise")
    p.add_argument("--label-name", default=None, help="name of label 1 in dataset.json")
    p.add_argument("--holdout-test", action="store_true",
                   help="put the pkl's test images only into imagesTs (no splits_final.json) instead of using "
                        "them as fold-0 validation cases")


def _run(args) -> str:
    return convert_gms(args.source, args.id, args.name, include_normal=args.include_normal, color=args.color,
                       label_name=args.label_name, holdout_test=args.holdout_test, **common_kwargs(args))


GMS = Converter("gms", "GMS layout (images/, masks/, *_train_test_names.pkl): BUS, BUSI, GlaS, HAM10000, "
                "Kvasir-Instrument", _add_args, _run, with_split=True)
