"""``nnunet-ext plan-c2f``: the coarse-to-fine configurations ``3d_coarse`` and ``3d_fine``, planned by nnU-Net.

Both are ordinary nnU-Net configurations added to the dataset's plans (next to ``2d`` / ``3d_fullres``), each
planned by nnU-Net's own experiment planner (``get_plans_for_configuration``: patch size, batch size, network
topology for the GPU memory target), so every trainer of nnU-Net and of this project trains on them:

* ``3d_coarse``: the whole volume at low resolution. Per axis, the spacing of ``3d_fullres`` times
  ``max(1, median_size / coarse_size)`` (``coarse_size`` 160, the FLARE22 setting): the median volume is at most
  160 voxels along every axis (axes already below that keep their spacing). A small network: nnU-Net's
  topology with 16 base features (nnU-Net: 32), at most 256. Preprocessed by nnU-Net's ``DefaultPreprocessor``.
* ``3d_fine``: the spacing of ``3d_fullres`` on the region of interest, the bounding box of the labels plus a margin
  (20 mm by default, per axis in mm). The planner sees the median ROI size instead of the median volume size.
  Preprocessed by ``nnunet_ext.flare22.preprocess.ROICropPreprocessor`` (crops to the ROI first). At inference
  the ROI comes from the coarse model (``nnunet-ext predict-c2f``).

Both carry ``"nnunet_ext": {"c2f": "coarse" | "fine", "roi_margin_mm": M}``; the fine one also records predict-c2f's ROI
rule (``roi_mode``, ``roi_fg_threshold``, ``roi_min_component_ml``, ``roi_missing_class_margin_mm``: see
``nnunet_ext.flare22.roi``) and ``always_present_classes``, the classes that every training label has (read from the
label files in the same pass that measures the ROI sizes), which predict-c2f checks the coarse prediction against.
nnU-Net's planner is used as is (``-pl`` names any nnU-Net planner class, e.g. ``nnUNetPlannerResEncM``); nnU-Net
cannot load planners from outside its package, so ``nnUNetv2_plan_and_preprocess -pl`` cannot run this: the verb
calls the planner itself.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.flare22.roi import DEFAULT_MARGIN_MM, ROIRule, class_names, roi_from_mask
from nnunet_ext.unlabeled.roi import ROICrop

COARSE, FINE = "3d_coarse", "3d_fine"
DEFAULT_COARSE_SIZE = 160
COARSE_BASE_FEATURES, COARSE_MAX_FEATURES = 16, 256


def is_fine_configuration(configuration: dict) -> bool:
    """True for a fine configuration planned by plan-c2f (``"nnunet_ext": {"c2f": "fine"}``): its cases are cropped
    to a region of interest."""
    return configuration.get("nnunet_ext", {}).get("c2f") == "fine"


def _roi_crop_preprocessor() -> type:
    from nnunet_ext.flare22.preprocess import ROICropPreprocessor
    return ROICropPreprocessor


def _fine_masks_hint(dataset: str, name: str, configuration: dict, images_folder: str) -> str:
    coarse = configuration["nnunet_ext"].get("coarse_configuration", COARSE)
    return (f"{name} is the fine configuration of coarse-to-fine plans: its unlabelled cases are cropped to a region "
            f"of interest. Give one mask per case with --roi-masks DIR, e.g. the coarse model's predictions: "
            f"nnUNetv2_predict -i {images_folder} -o DIR -d {dataset} -c {coarse}")


#: how ``preprocess-unlabeled`` crops the unlabelled cases of a fine configuration (``ROICropPreprocessor``, to one
#: mask per case); handed to :mod:`nnunet_ext.unlabeled.roi` by ``nnunet_ext.flare22.cli``
FINE_ROI_CROP = ROICrop(applies=is_fine_configuration, preprocessor=_roi_crop_preprocessor,
                        masks_hint=_fine_masks_hint)


def coarse_spacing(fullres_spacing: Sequence[float], median_shape: Sequence[float],
                   coarse_size: int = DEFAULT_COARSE_SIZE) -> List[float]:
    """Spacing at which the median volume is at most ``coarse_size`` voxels along every axis (never finer than
    ``fullres_spacing``)."""
    return [float(s) * max(1.0, float(m) / coarse_size) for s, m in zip(fullres_spacing, median_shape)]


def _roi_shape_mm(label_file: str, reader_class: str, margin_mm: float) -> Tuple[Optional[List[float]], List[int]]:
    """Physical size (mm, original axis order) of one label file's ROI (None for an empty label map), and the label
    values it has."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    seg, props = recursive_find_reader_writer_by_name(reader_class)().read_seg(label_file)
    present = [int(v) for v in np.unique(seg)]
    roi = roi_from_mask(seg[0] > 0, props["spacing"], margin_mm)
    if roi.bbox is None:
        return None, present
    return [float((b - a) * s) for (a, b), s in zip(roi.bbox, props["spacing"])], present


def median_roi_shape(dataset_name: str, reader_class: str, spacing_transposed: Sequence[float],
                     transpose_forward: Sequence[int], margin_mm: float,
                     num_processes: int = 2) -> Tuple[List[int], List[int]]:
    """Median ROI size in voxels at ``spacing_transposed`` (nnU-Net's transposed axis order) over the training
    labels, and the classes of dataset.json (background and the ignore label left out) that every one of them has;
    each label file is read once."""
    from multiprocessing import get_context

    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from tqdm import tqdm

    folder = os.path.join(nnUNet_raw, dataset_name)
    dataset_json = json.load(open(os.path.join(folder, "dataset.json")))
    files = [v["label"] for v in get_filenames_of_train_images_and_targets(folder, dataset_json).values()]
    args = [(f, reader_class, margin_mm) for f in files]
    with get_context("spawn").Pool(max(1, num_processes)) as pool:
        found = list(tqdm(pool.starmap(_roi_shape_mm, args), total=len(args), desc="ROI sizes", unit="label"))
    sizes = [s for s, _ in found if s is not None]
    if not sizes:
        raise UserError(f"no training label of {dataset_name} has foreground: 3d_fine has no ROI to plan")
    mm = np.median(np.array(sizes), 0)[list(transpose_forward)]
    always = set(class_names(dataset_json)) - {0}
    for _, present in found:
        always &= set(present)
    return [int(round(m / s)) for m, s in zip(mm, spacing_transposed)], sorted(always)


def _planner(dataset: str, planner: str, plans: str, gpu_memory_target: Optional[float]):
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                      current_module="nnunetv2.experiment_planning")
    if cls is None:
        raise UserError(f"nnU-Net has no experiment planner {planner!r} (e.g. ExperimentPlanner, nnUNetPlannerResEncM)")
    kwargs = {"plans_name": plans}
    if gpu_memory_target is not None:
        kwargs["gpu_memory_target_in_gb"] = gpu_memory_target
    return cls(dataset, **kwargs)


def plan_c2f(dataset, plans: str = "nnUNetPlans", planner: str = "ExperimentPlanner",
             gpu_memory_target: Optional[float] = None, coarse_size: int = DEFAULT_COARSE_SIZE,
             margin_mm: float = DEFAULT_MARGIN_MM, num_processes: int = 2, preprocess: bool = True,
             roi_rule: Optional[ROIRule] = None) -> Dict[str, dict]:
    """Add ``3d_coarse`` and ``3d_fine`` to ``plans`` of ``dataset`` (planning nnU-Net's configurations first if the
    plans do not exist, extracting the fingerprint first if needed) and preprocess both. ``roi_rule``: predict-c2f's
    ROI settings recorded in the fine plans (default: ``ROIRule`` with ``margin_mm``; its margin is ``margin_mm``)."""
    from nnunet_ext.paths import dataset_id, nnunet_folder, resolve_dataset_name

    name = resolve_dataset_name(dataset)
    ds_id = dataset_id(name)
    pre = nnunet_folder("nnUNet_preprocessed") / name
    if not (pre / "dataset_fingerprint.json").is_file():
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints
        extract_fingerprints([ds_id], num_processes=num_processes)
    plans_file = pre / f"{plans}.json"
    pl = _planner(ds_id, planner, plans, gpu_memory_target)
    if not plans_file.is_file():
        pl.plan_experiment()
    p = json.loads(plans_file.read_text())
    full = p["configurations"].get("3d_fullres")
    if full is None or "spacing" not in full:
        raise UserError(f"{plans_file} has no 3d_fullres configuration with a spacing: coarse-to-fine needs 3D data "
                        f"planned by nnU-Net (nnUNetv2_plan_experiment -d {ds_id})")
    spacing, median = full["spacing"], full["median_image_size_in_voxels"]
    n_train = json.loads((nnunet_folder("nnUNet_raw") / name / "dataset.json").read_text())["numTraining"]

    # coarse: whole volume at low resolution, small network
    c_spacing = coarse_spacing(spacing, median, coarse_size)
    c_median = [int(round(m * s / c)) for m, s, c in zip(median, spacing, c_spacing)]
    base, top = pl.UNet_base_num_features, pl.UNet_max_features_3d
    pl.UNet_base_num_features, pl.UNet_max_features_3d = COARSE_BASE_FEATURES, COARSE_MAX_FEATURES
    try:
        coarse = pl.get_plans_for_configuration(c_spacing, c_median, f"{plans}_{COARSE}",
                                                float(np.prod(c_median, dtype=np.float64) * n_train), {})
    finally:
        pl.UNet_base_num_features, pl.UNet_max_features_3d = base, top
    coarse["batch_dice"] = False
    coarse["nnunet_ext"] = {"c2f": "coarse", "fine_configuration": FINE, "roi_margin_mm": float(margin_mm),
                            "coarse_size": int(coarse_size)}

    # fine: full resolution on the labels' bounding box + margin
    f_median, always = median_roi_shape(name, p["image_reader_writer"], spacing, p["transpose_forward"], margin_mm,
                                        num_processes)
    fine = pl.get_plans_for_configuration(spacing, f_median, f"{plans}_{FINE}",
                                          float(np.prod(f_median, dtype=np.float64) * n_train), {})
    fine["batch_dice"] = bool(full.get("batch_dice", False))
    rule = roi_rule or ROIRule(margin_mm=margin_mm)
    rule = ROIRule(mode=rule.mode, margin_mm=margin_mm, fg_threshold=rule.fg_threshold,
                   min_component_ml=rule.min_component_ml, missing_margin_mm=rule.missing_margin_mm,
                   always_present=always)
    fine["nnunet_ext"] = {"c2f": "fine", "coarse_configuration": COARSE, **rule.plans_record()}

    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    p = json.loads(plans_file.read_text())  # re-read: the planner may just have written it
    p["configurations"][COARSE], p["configurations"][FINE] = coarse, fine
    recursive_fix_for_json_export(p)
    write_json_atomic(plans_file, p, indent=4)
    for c, cfg in ((COARSE, coarse), (FINE, fine)):
        print(f"plan-c2f: {name} {plans}: {c}: spacing {[round(s, 3) for s in cfg['spacing']]}, median size "
              f"{list(cfg['median_image_size_in_voxels'])}, patch {list(cfg['patch_size'])}, "
              f"batch {cfg['batch_size']}, features {list(cfg['architecture']['arch_kwargs']['features_per_stage'])}")
    print(f"plan-c2f: classes that every training case has: {' '.join(map(str, always)) or 'none'} (predict-c2f "
          f"warns and widens the ROI when the coarse model misses one)")
    if preprocess:
        preprocess_c2f(ds_id, plans, num_processes)
    print(f"next: nnUNetv2_train {ds_id} {COARSE} 0 && nnUNetv2_train {ds_id} {FINE} 0   (any -tr), then "
          f"nnunet-ext predict-c2f -i IMAGES -o OUT -d {ds_id}")
    return {COARSE: coarse, FINE: fine}


def preprocess_c2f(dataset_id: int, plans: str = "nnUNetPlans", num_processes: int = 2) -> None:
    """``3d_coarse`` with nnU-Net's own preprocessing (which also copies the reference segmentations), ``3d_fine``
    with ``ROICropPreprocessor``."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    from nnunet_ext.flare22.preprocess import ROICropPreprocessor

    preprocess_dataset(dataset_id, plans, (COARSE,), (num_processes,))
    print(f"Configuration: {FINE} (cropped to the labels' bounding box + margin)...")
    ROICropPreprocessor(verbose=False).run(dataset_id, FINE, plans, num_processes)
