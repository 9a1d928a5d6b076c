"""Dense CRF refinement of an nnU-Net prediction folder: the work of ``nnunet-ext stego-crf`` (``stego.cli``).

``nnunet-ext stego-crf -i IMAGES_DIR -p PRED_DIR -o OUT_DIR [-d DATASET] [--iterations 10]``

PRED_DIR is the output of ``nnUNetv2_predict ... --save_probabilities``: per case ``<case><file_ending>`` (the
segmentation), ``<case>.npz`` (``probabilities``, (K, *spatial)) and ``<case>.pkl`` (the properties). nnU-Net
writes the probabilities after reverting its crop and transpose, so they are in the axis order of its reader's
image arrays, (c, z, y, x), and (c, 1, y, x) for 2D images: the images of IMAGES_DIR (``<case>_0000<file_ending>``,
``_0001``, ... for more channels) are read with the same reader and line up voxel for voxel.

Per case: the guide is the image on 0..255 (``--guide auto``: as is for 8-bit natural images read by
NaturalImage2DIO, else ``image_to_guide``'s per-image 0.5 / 99.5 percentile rescale, one channel replicated to three);
``dense_crf`` (STEGO's parameters) refines the probabilities, one 2D image at a time: a 2D image is one CRF, a 3D
volume one CRF per slice along the first spatial axis of the reader's array (z for SimpleITKIO); the segmentation
is the argmax mapped to label values as nnU-Net does (channel k is the k-th label of dataset.json's ``labels``,
which nnU-Net requires to be 0..K-1; without a dataset.json, channel index = label value). It is written with the
writer nnU-Net used (``image_reader_writer`` of PRED_DIR/plans.json, else the one dataset.json / the file ending
selects) and the case's properties from its .pkl, so the geometry is kept exactly.

dataset.json: from $nnUNet_raw/<dataset> with ``-d``, else PRED_DIR/dataset.json (nnUNetv2_predict writes it),
else none. Existing outputs are skipped (the command resumes); each file is written under a temporary name and
renamed. Region-based predictions (sigmoid per region, not a distribution over labels) are refused.
"""
from __future__ import annotations

from nnunet_ext.atomic_io import replace_atomic
from nnunet_ext.core.labels import class_argmax
from nnunet_ext.errors import UserError

_SKIP_SUFFIXES = (".npz", ".pkl", ".json")


class CRFError(UserError):
    """An expected failure of ``nnunet-ext stego-crf`` (bad folder, missing file, mismatched shapes)."""


def _dataset_json(pred_dir, dataset):
    import json
    import os

    if dataset is not None:
        from nnunet_ext.paths import nnunet_folder, resolve_dataset_name
        name = resolve_dataset_name(dataset, error=CRFError)
        path = nnunet_folder("nnUNet_raw", error=CRFError) / name / "dataset.json"
    else:
        path = os.path.join(pred_dir, "dataset.json")
        if not os.path.isfile(path):
            return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CRFError(f"cannot read {path}: {e}") from None


def _file_ending(pred_dir, names, dataset_json) -> str:
    if dataset_json is not None and "file_ending" in dataset_json:
        return dataset_json["file_ending"]
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES
    known = sorted({e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}, key=len, reverse=True)
    found = set()
    for n in names:
        if n.startswith(".") or n.endswith(_SKIP_SUFFIXES):
            continue
        e = next((e for e in known if n.lower().endswith(e)), None)
        if e is not None:
            found.add(n[len(n) - len(e):])
    if not found:
        raise CRFError(f"no segmentations in {pred_dir} (expected nnUNetv2_predict's output: <case><file_ending>, "
                       f"<case>.npz, <case>.pkl)")
    if len(found) > 1:
        raise CRFError(f"segmentations with several file endings in {pred_dir} ({', '.join(sorted(found))}) and no "
                       f"dataset.json there: pass -d DATASET")
    return found.pop()


def _label_values(dataset_json, num_channels: int, case: str):
    import numpy as np

    if dataset_json is None or "labels" not in dataset_json:
        return np.arange(num_channels)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    try:
        lm = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    except AssertionError as e:
        raise CRFError(f"dataset.json labels are not valid for nnU-Net: {e}") from None
    if lm.has_regions:
        raise CRFError("the dataset is region-based (dataset.json labels with several values): its probabilities are "
                       "per-region sigmoids, not a distribution over labels, and a Potts CRF does not apply")
    values = np.asarray(lm.all_labels)
    if len(values) != num_channels:
        raise CRFError(f"{case}.npz has {num_channels} channels but dataset.json has {len(values)} labels "
                       f"({', '.join(map(str, values))}): is -d the dataset that was predicted?")
    return values


def _reader_writer(pred_dir, dataset_json, ending, example_image):
    import json
    import os

    from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                         determine_reader_writer_from_file_ending,
                                                         recursive_find_reader_writer_by_name)
    plans = os.path.join(pred_dir, "plans.json")
    if os.path.isfile(plans):
        try:
            with open(plans) as f:
                name = json.load(f).get("image_reader_writer")
            if name:
                return recursive_find_reader_writer_by_name(name)
        except (OSError, ValueError, RuntimeError):
            pass
    try:
        if dataset_json is not None and "file_ending" in dataset_json:
            return determine_reader_writer_from_dataset_json(dataset_json, example_image, verbose=False)
        return determine_reader_writer_from_file_ending(ending, example_image, verbose=False)
    except RuntimeError as e:
        raise CRFError(f"nnU-Net has no reader for {example_image}: {e}") from None


def _image_files(images_dir, case, ending):
    """``<case>_XXXX<ending>`` in ``images_dir``, sorted: the files nnUNetv2_predict reads for a case (like nnU-Net, not
    from dataset.json: an RGB PNG is one file for three channel_names)."""
    import os
    import re

    pat = re.compile(re.escape(case) + r"_\d{4}" + re.escape(ending))
    files = sorted(f for f in os.listdir(images_dir) if pat.fullmatch(f))
    if not files:
        raise CRFError(f"no image {case}_0000{ending} in {images_dir}: is -i the folder that was predicted?")
    return [os.path.join(images_dir, f) for f in files]


def _check_arguments(images_dir, pred_dir, out_dir, iterations: int) -> None:
    """One clear line for a missing folder, ``-o`` equal to ``-p`` or negative iterations."""
    import os

    for what, d in (("-i", images_dir), ("-p", pred_dir)):
        if not os.path.isdir(d):
            raise CRFError(f"{what} {d} is not a folder")
    if os.path.abspath(out_dir) == os.path.abspath(pred_dir):
        raise CRFError("-o must differ from -p (the refined segmentations would replace the predictions)")
    if iterations < 0:
        raise CRFError(f"--iterations must be >= 0, got {iterations}")


def _torch_device(device: str):
    """``--device`` as a usable ``torch.device`` ("auto": CUDA when available), or one clear line."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise CRFError(f"--device {device}: {e}") from None
    return device


def _cases(pred_dir, out_dir, dataset_json):
    """``(ending, cases, todo)``: the segmentations of ``pred_dir`` and those not yet in ``out_dir`` (each checked
    to have its probabilities, ``<case>.npz`` and ``<case>.pkl``)."""
    import os

    names = sorted(os.listdir(pred_dir))
    ending = _file_ending(pred_dir, names, dataset_json)
    cases = [n[:-len(ending)] for n in names if n.endswith(ending) and not n.startswith(".")]
    if not cases:
        raise CRFError(f"no segmentations <case>{ending} in {pred_dir}")
    todo = [c for c in cases if not os.path.isfile(os.path.join(out_dir, c + ending))]
    for c in todo:
        for suffix in (".npz", ".pkl"):
            f = os.path.join(pred_dir, c + suffix)
            if not os.path.isfile(f):
                raise CRFError(f"{f} not found: the CRF needs the probabilities; predict with nnUNetv2_predict ... "
                               f"--save_probabilities (it writes <case>.npz and <case>.pkl next to <case>{ending})")
    return ending, cases, todo


def _prepare_output(out_dir, pred_dir, images_dir, guide: str, crf_kwargs: dict) -> None:
    """``out_dir`` as a prediction folder like ``pred_dir`` (its dataset.json and plans.json), with the CRF's
    settings in ``stego_crf_args.json``."""
    import json
    import os
    import shutil

    os.makedirs(out_dir, exist_ok=True)
    for n in ("dataset.json", "plans.json"):  # so that OUT_DIR is a prediction folder like PRED_DIR
        if os.path.isfile(os.path.join(pred_dir, n)) and not os.path.exists(os.path.join(out_dir, n)):
            shutil.copy2(os.path.join(pred_dir, n), os.path.join(out_dir, n))
    with open(os.path.join(out_dir, "stego_crf_args.json"), "w") as f:
        json.dump(dict(crf_kwargs, images=os.path.abspath(images_dir), pred=os.path.abspath(pred_dir), guide=guide,
                       axis="2D image, or slices along the first spatial axis of nnU-Net's image array"), f, indent=2)


def _read_case(rw, rw_class, files, pred_dir, case: str):
    """``(image, properties, probabilities)`` of one case: its images, and the ``.pkl`` and ``.npz`` that
    ``nnUNetv2_predict --save_probabilities`` wrote (checked to match the image's shape)."""
    import os

    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    try:
        image, _ = rw.read_images(files)
    except Exception as e:  # nnU-Net's readers raise bare RuntimeErrors / asserts
        raise CRFError(f"cannot read {', '.join(files)} with {rw_class.__name__}: {e!r}") from None
    props = load_pickle(os.path.join(pred_dir, case + ".pkl"))
    with np.load(os.path.join(pred_dir, case + ".npz")) as z:
        if "probabilities" not in z:
            raise CRFError(f"{os.path.join(pred_dir, case + '.npz')} has no 'probabilities' array "
                           f"(keys: {', '.join(z.files)}): not written by nnUNetv2_predict --save_probabilities?")
        probs_np = z["probabilities"]
    if image.ndim != 4 or probs_np.ndim != 4 or probs_np.shape[1:] != image.shape[1:]:
        raise CRFError(f"case {case}: probabilities {tuple(probs_np.shape)} (K, *spatial) do not match the image "
                       f"{tuple(image.shape)} (C, *spatial) read from {files[0]}: is -i the folder that was "
                       f"predicted?")
    return image, props, probs_np


def _guide_of(image, guide: str, rw_class):
    """The CRF's 3-channel guide: the raw colours (``guide`` "raw", or "auto" for 0-255 natural images; RGBA ->
    RGB), else ``image_to_guide``; one channel is repeated to three."""
    import numpy as np
    import torch
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    from nnunet_ext.stego.crf import image_to_guide

    raw = guide == "raw" or (guide == "auto" and issubclass(rw_class, NaturalImage2DIO)
                             and float(np.nanmin(image)) >= 0 and float(np.nanmax(image)) <= 255)
    if raw and issubclass(rw_class, NaturalImage2DIO) and image.shape[0] == 4:
        image = image[:3]  # RGBA: the colour is RGB
    g = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) if raw else image_to_guide(image)
    if g.shape[0] == 1:
        g = g.expand(3, *g.shape[1:])
    return g


def _write_case(rw, out_dir, case: str, ending: str, refined, values, props, probs_dtype,
                save_probabilities: bool) -> None:
    """The refined segmentation (label values of the argmax) and, if asked, its probabilities, each atomically."""
    import os

    import numpy as np
    from batchgenerators.utilities.file_and_folder_operations import save_pickle

    seg = values[class_argmax(refined, 0).numpy()]
    seg = seg.astype(np.uint8 if len(values) - 1 < 255 else np.uint16)
    if save_probabilities:
        replace_atomic(os.path.join(out_dir, case + ".npz"),  # the temporary name ends in .npz: numpy keeps it
                       lambda t: np.savez_compressed(t, probabilities=refined.numpy().astype(probs_dtype)),
                       suffix=".npz")
        replace_atomic(os.path.join(out_dir, case + ".pkl"), lambda t: save_pickle(props, t))
    replace_atomic(os.path.join(out_dir, case + ending), lambda t: rw.write_seg(seg, t, props), suffix=ending)


def refine_prediction_folder(images_dir, pred_dir, out_dir, dataset=None, iterations: int = 10, max_pixels=None,
                             guide: str = "auto", device: str = "auto", save_probabilities: bool = False,
                             progress: bool = True):
    """Refine every case of an nnU-Net prediction folder (module docstring). Returns (refined, skipped)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from nnunet_ext.stego.crf import DEFAULT_MAX_PIXELS, STEGO_CRF, refine_volume

    _check_arguments(images_dir, pred_dir, out_dir, iterations)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    device = _torch_device(device)
    dataset_json = _dataset_json(pred_dir, dataset)
    ending, cases, todo = _cases(pred_dir, out_dir, dataset_json)
    crf_kwargs = dict(STEGO_CRF, iterations=int(iterations), max_pixels=max_pixels)
    _prepare_output(out_dir, pred_dir, images_dir, guide, crf_kwargs)

    rw_class = None
    for case in tqdm(todo, desc="stego-crf", unit="case", disable=not progress or not todo):
        files = _image_files(images_dir, case, ending)
        if rw_class is None:
            rw_class = _reader_writer(pred_dir, dataset_json, ending, files[0])
        rw = rw_class()
        image, props, probs_np = _read_case(rw, rw_class, files, pred_dir, case)
        values = _label_values(dataset_json, probs_np.shape[0], case)
        g = _guide_of(image, guide, rw_class)
        probs = torch.from_numpy(np.ascontiguousarray(probs_np, dtype=np.float32))
        refined = refine_volume(g, probs, device=device, **crf_kwargs)  # (K, *spatial), spatial = (S, H, W)
        _write_case(rw, out_dir, case, ending, refined, values, props, probs_np.dtype, save_probabilities)
    return len(todo), len(cases) - len(todo)
