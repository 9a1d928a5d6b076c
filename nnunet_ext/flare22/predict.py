"""``nnunet-ext predict-c2f``: coarse-to-fine inference for challenge submissions (FLARE22).

Per case, with both models loaded once (nnU-Net's ``nnUNetPredictor``, any trainer, any folds):

1. read the image once (the plans' reader, e.g. SimpleITK: geometry kept for the output);
2. coarse model (``3d_coarse``) on the whole volume, on nnU-Net's preprocessed coarse grid: softmax and argmax,
   the ROI mask of ``roi.ROIRule`` (default: the argmax's largest component per organ plus the components where
   the foreground probability ``1 - p(background)`` is at least 0.2 that are large or the most probable place of an
   organ; ``--roi-mode argmax``: the largest components alone, the rule before), its bounding box mapped back to the
   original voxel grid (``roi.box_in_original``), grown by the margin in mm (the plans' ``roi_margin_mm``, 20 mm by
   default) and clipped. The coarse logits are never resampled to full resolution: only the box is needed. Fewer
   than ``min_roi_voxels`` voxels in the mask: the fine model gets the whole volume (a warning says so). A class that
   every training case has (recorded by plan-c2f) but the coarse argmax lacks: a warning naming the case and the
   class, and the box grows by the larger margin (``roi_missing_class_margin_mm``; 3 x the margin by default): the
   fine model segments both boxes, the larger one gives only the missing classes (``roi.merge_widened``);
3. fine model (``3d_fine``) on the image cropped to the ROI, nnU-Net's preprocessing and export (resampling back to
   the original spacing of the crop), pasted into a background volume of the original shape;
4. written with the input's exact geometry (spacing, origin, direction, shape) and the label values of
   ``dataset.json``, atomically (a half-written file never has the final name).

Fast by default: no test-time mirroring (``--tta`` turns it on), tile step 0.75 of the patch (nnU-Net: 0.5),
mixed precision (fp16 autocast) on CUDA as in nnU-Net's predictor. A case that cannot be read or predicted is
reported by file name and the run goes on; per case the log gives read / coarse / fine / write times and the share
spent in the networks, and ``OUT/predict_c2f_cases.csv`` (or ``--csv``) holds the ROI (box, mode, margin, share of
the volume, missing classes), wall time, peak RAM and peak GPU memory. ``--continue`` skips cases whose output
exists.
"""
from __future__ import annotations

import csv
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from nnunet_ext.atomic_io import replace_atomic
from nnunet_ext.core.labels import class_argmax
from nnunet_ext.core.resources import PeakMemory
from nnunet_ext.errors import UserError
from nnunet_ext.flare22.roi import MISSING_FALLBACK, ROI, ROIRule, box_in_original, class_names, merge_widened
from nnunet_ext.paths import debug_enabled

CSV_NAME = "predict_c2f_cases.csv"
CSV_FIELDS = ("case", "status", "fallback", "roi", "roi_mode", "roi_margin_mm", "roi_fraction", "missing_classes",
              "read_s", "coarse_s", "fine_s", "write_s", "total_s",
              "network_s", "network_share", "peak_ram_mb", "peak_gpu_mb", "error")


@dataclass
class CaseResult:
    case: str
    status: str = "ok"
    fallback: str = ""
    roi: Optional[List[List[int]]] = None
    roi_mode: str = ""
    roi_margin_mm: Optional[float] = None
    roi_fraction: Optional[float] = None
    missing_classes: str = ""
    times: Dict[str, float] = field(default_factory=dict)
    peak_ram_mb: Optional[float] = None
    peak_gpu_mb: Optional[float] = None
    error: str = ""

    def row(self) -> dict:
        t = self.times
        total = sum(t.get(k, 0.0) for k in ("read", "coarse", "fine", "write"))
        net = t.get("coarse_net", 0.0) + t.get("fine_net", 0.0)
        r = lambda v: "" if v is None else round(float(v), 4)  # noqa: E731
        return {"case": self.case, "status": self.status, "fallback": self.fallback,
                "roi": "" if self.roi is None else str(self.roi), "roi_mode": self.roi_mode,
                "roi_margin_mm": r(self.roi_margin_mm), "roi_fraction": r(self.roi_fraction),
                "missing_classes": self.missing_classes, "read_s": r(t.get("read")),
                "coarse_s": r(t.get("coarse")), "fine_s": r(t.get("fine")), "write_s": r(t.get("write")),
                "total_s": r(total), "network_s": r(net), "network_share": r(net / total if total else None),
                "peak_ram_mb": r(self.peak_ram_mb), "peak_gpu_mb": r(self.peak_gpu_mb), "error": self.error}


def _predictor(folder: str, folds, checkpoint: str, device: torch.device, step_size: float, tta: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if not os.path.isdir(folder):
        raise UserError(f"no trained model in {folder}: train it first (nnUNetv2_train ...) or check -tr / -p / "
                        f"$nnUNet_results")
    p = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                        perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                        verbose_preprocessing=False, allow_tqdm=False)
    try:
        p.initialize_from_trained_model_folder(folder, folds, checkpoint_name=checkpoint)
    except (FileNotFoundError, AssertionError) as e:
        raise UserError(f"cannot load the model in {folder} ({checkpoint}, folds {folds or 'auto'}): {e}") from e
    return p


class CoarseToFinePredictor:
    """Both models, loaded once; ``predict(data, properties)`` segments one image (nnU-Net reader layout).

    The ROI rule (``roi.ROIRule``) is the fine configuration's record (plan-c2f) with the non-None arguments on top;
    plans from before the record of some setting take this version's defaults, and ``notes`` says so."""

    def __init__(self, coarse_folder: str, fine_folder: str, folds_coarse=None, folds_fine=None,
                 checkpoint: str = "checkpoint_final.pth", device: torch.device = torch.device("cpu"),
                 step_size: float = 0.75, tta: bool = False, margin_mm: Optional[float] = None,
                 min_roi_voxels: int = 10, roi_mode: Optional[str] = None, fg_threshold: Optional[float] = None,
                 min_component_ml: Optional[float] = None, missing_margin_mm=None,
                 always_present: Optional[Sequence[int]] = None):
        self.device = device
        self.coarse = _predictor(coarse_folder, folds_coarse, checkpoint, device, step_size, tta)
        self.fine = _predictor(fine_folder, folds_fine, checkpoint, device, step_size, tta)
        if self.coarse.label_manager.has_regions or self.fine.label_manager.has_regions:
            raise UserError("predict-c2f needs models trained on class labels, not regions")
        self.labels = [int(v) for v in self.coarse.label_manager.foreground_labels]
        self.names = class_names(self.fine.dataset_json)
        record = self.fine.configuration_manager.configuration.get("nnunet_ext", {})
        if always_present is not None:
            unknown = sorted(set(int(c) for c in always_present) - set(self.labels))
            if unknown:
                raise UserError(f"--always-present {' '.join(map(str, unknown))}: not a class of the coarse model "
                                f"(classes {' '.join(map(str, self.labels))})")
        try:
            self.rule = ROIRule.from_plans(record, mode=roi_mode, margin_mm=margin_mm, fg_threshold=fg_threshold,
                                           min_component_ml=min_component_ml, missing_margin_mm=missing_margin_mm,
                                           always_present=always_present, min_voxels=int(min_roi_voxels))
        except ValueError as e:
            raise UserError(f"predict-c2f: {e}") from e
        self.margin_mm = self.rule.margin_mm
        self.notes: List[str] = []
        if roi_mode is None and "roi_mode" not in record:
            self.notes.append("NOTE: the fine model's plans come from an earlier plan-c2f, without ROI settings: "
                              f"this run uses the {self.rule.mode} ROI with its defaults; --roi-mode argmax gives "
                              "the ROI those plans were used with before")
        if self.rule.always_present is None:
            self.notes.append("NOTE: the fine model's plans do not record the classes that every training case has "
                              "(an earlier plan-c2f): no check for organs the coarse model missed; give them with "
                              "--always-present LABEL ... (plan-c2f records them for models trained from now on)")

    def class_list(self, classes: Sequence[int]) -> str:
        """``"kidney (2), spleen (3)"``."""
        return ", ".join(f"{self.names.get(int(c), 'class')} ({int(c)})" for c in classes)

    def describe_rule(self) -> str:
        r = self.rule
        text = f"ROI {r.mode}, margin {r.margin_mm:g} mm"
        if r.mode == "softmax":
            text += f", foreground probability >= {r.fg_threshold:g}, components >= {r.min_component_ml:g} mL"
        if r.always_present is not None:
            wide = "the whole volume" if math.isinf(r.missing_margin_mm) else f"{r.missing_margin_mm:g} mm"
            text += (f", always present: {' '.join(map(str, r.always_present)) or 'none'}" +
                     (f" (missed: {wide})" if r.mode == "softmax" else ""))
        return text

    @staticmethod
    def _preprocess(predictor, data: np.ndarray, spacing):
        pm, cm = predictor.plans_manager, predictor.configuration_manager
        pre = cm.preprocessor_class(verbose=False)
        d, _, props = pre.run_case_npy(data, None, {"spacing": list(spacing)}, pm, cm, predictor.dataset_json)
        return torch.from_numpy(np.ascontiguousarray(d)), props

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def coarse_roi(self, data: np.ndarray, spacing, times: Dict[str, float]) -> ROI:
        """The region of interest from the coarse model (or no box: whole volume, with the reason)."""
        from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask

        d, props = self._preprocess(self.coarse, data, spacing)
        t = time.perf_counter()
        logits = self.coarse.predict_logits_from_preprocessed_data(d)
        self._sync()
        times["coarse_net"] = time.perf_counter() - t
        seg = class_argmax(logits, 0).cpu().numpy().astype(np.uint8)  # CPU logits in nnU-Net 2.8, maybe not later
        probs = torch.softmax(logits.float(), 0).cpu().numpy() if self.rule.mode == "softmax" else None
        del logits
        mask = self.rule.mask(probs, self.labels, self.coarse.configuration_manager.spacing, seg)
        del probs
        missing = self.rule.missing_classes(seg)
        fallback, margin = self.rule.decide(mask, missing)
        if fallback is not None and fallback != MISSING_FALLBACK:
            return ROI(None, fallback, missing)
        box = box_in_original(get_bbox_from_mask(mask), mask.shape, props, self.coarse.plans_manager.transpose_forward)
        return self.rule.roi_of_box(box, spacing, data.shape[1:], missing, fallback, margin)

    def fine_segmentation(self, crop: np.ndarray, spacing, times: Dict[str, float]) -> np.ndarray:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        d, props = self._preprocess(self.fine, crop, spacing)
        t = time.perf_counter()
        logits = self.fine.predict_logits_from_preprocessed_data(d)
        self._sync()
        times["fine_net"] = times.get("fine_net", 0.0) + time.perf_counter() - t
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.fine.plans_manager, self.fine.configuration_manager, self.fine.label_manager, props)

    def predict(self, data: np.ndarray, properties: dict, times: Optional[Dict[str, float]] = None):
        """``(segmentation of data.shape[1:], ROI)``; ``times`` gets coarse / fine (and their network parts)."""
        times = {} if times is None else times
        spacing = properties["spacing"]
        t = time.perf_counter()
        roi = self.coarse_roi(data, spacing, times)
        times["coarse"] = time.perf_counter() - t
        t = time.perf_counter()
        shape = data.shape[1:]
        part = self.fine_segmentation(data[(slice(None),) + roi.slices(shape)], spacing, times)
        seg = np.zeros(shape, dtype=part.dtype)
        seg[roi.slices(shape)] = part
        if roi.inner is not None:  # widened for missing classes: the found ones from the box of the usual margin
            inner = ROI(roi.inner)
            seg = merge_widened(self.fine_segmentation(data[(slice(None),) + inner.slices(shape)], spacing, times),
                                seg, roi)
        times["fine"] = time.perf_counter() - t
        return seg, roi


def list_cases(folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """``{case: [channel files]}`` of an nnU-Net image folder (``CASE_XXXX<ending>``); a case with a missing
    channel keeps what it has (its prediction then fails with a clear message)."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder, \
        get_identifiers_from_splitted_dataset_folder

    if not os.path.isdir(folder):
        raise UserError(f"input folder {folder} does not exist")
    ids = [str(i) for i in get_identifiers_from_splitted_dataset_folder(folder, file_ending)]
    if not ids:
        raise UserError(f"no images named CASE_0000{file_ending} in {folder}")
    return dict(zip(ids, create_lists_from_splitted_dataset_folder(folder, file_ending, ids)))


def check_gzip(path: str) -> None:
    """Raise ``UserError`` if ``path`` (``.gz``) is a truncated or corrupt gzip stream. ITK reads a truncated
    ``.nii.gz`` without an error (the missing voxels become 0), so this is checked before reading."""
    import gzip
    import zlib

    if not path.endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise UserError(f"cannot read {path}: truncated or corrupt gzip file ({e})") from e


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
    replace_atomic(path, write)


def predict_folder(predictor: CoarseToFinePredictor, input_folder: str, output_folder: str,
                   csv_path: Optional[str] = None, resume: bool = False, log=print) -> List[CaseResult]:
    """Every case of ``input_folder`` -> ``output_folder/CASE<ending>``; failures are reported and skipped."""
    from tqdm import tqdm

    pm, dj = predictor.fine.plans_manager, predictor.fine.dataset_json
    ending, n_ch = dj["file_ending"], len(dj.get("channel_names", dj.get("modality", {})))
    cases = list_cases(input_folder, ending, n_ch)
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    csv_file = Path(csv_path) if csv_path else out / CSV_NAME
    results: List[CaseResult] = []
    for case, files in tqdm(cases.items(), desc="predict-c2f", unit="case"):
        target = out / f"{case}{ending}"
        if resume and target.is_file():
            results.append(CaseResult(case, status="skipped (output exists)"))
            _write_csv(csv_file, [r.row() for r in results])
            continue
        res = CaseResult(case)
        try:
            with PeakMemory(predictor.device) as mem:
                if len(files) != n_ch:
                    raise UserError(f"{case}: {len(files)} channel file(s) in {input_folder}, the model needs "
                                    f"{n_ch} ({case}_0000{ending} ...)")
                t = time.perf_counter()
                rw = pm.image_reader_writer_class()
                for f in files:
                    check_gzip(f)
                try:
                    data, props = rw.read_images(files)
                except Exception as e:  # noqa: BLE001 - any reader error: name the file
                    raise UserError(f"cannot read {', '.join(files)}: {str(e).strip().splitlines()[-1]}") from e
                if data.size == 0 or min(data.shape) == 0:
                    raise UserError(f"cannot read {', '.join(files)}: empty image {tuple(data.shape[1:])} (truncated "
                                    f"or corrupt file?)")
                if not np.isfinite(data).all():
                    raise UserError(f"{', '.join(files)}: the image has NaN or infinite values")
                res.times["read"] = time.perf_counter() - t
                seg, roi = predictor.predict(data, props, res.times)
                res.roi, res.fallback = roi.bbox, roi.fallback or ""
                res.roi_mode, res.roi_margin_mm = predictor.rule.mode, roi.margin_mm
                res.roi_fraction = roi.fraction(data.shape[1:])
                res.missing_classes = " ".join(str(c) for c in roi.missing)
                _warn(predictor, case, roi, log)
                t = time.perf_counter()
                tmp = out / f".{case}.partial{ending}"
                rw.write_seg(seg, str(tmp), props)
                os.replace(tmp, target)
                res.times["write"] = time.perf_counter() - t
            res.peak_ram_mb, res.peak_gpu_mb = mem.ram_mb, mem.gpu_mb
            row = res.row()
            log(f"{case}: read {row['read_s']:.2f} s, coarse {row['coarse_s']:.2f} s, fine {row['fine_s']:.2f} s, "
                f"write {row['write_s']:.2f} s = {row['total_s']:.2f} s ({100 * row['network_share']:.0f}% in the "
                f"networks), ROI {roi.bbox or 'whole volume'} ({100 * res.roi_fraction:.0f}% of the volume), "
                f"peak RAM {mem.ram_mb:.0f} MB"
                + (f", peak GPU {mem.gpu_mb:.0f} MB" if mem.gpu_mb is not None else ""))
        except Exception as e:  # noqa: BLE001 - one bad case must not stop a submission run
            res.status, res.error = "failed", str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            names = ", ".join(os.path.basename(f) for f in files)
            if not isinstance(e, UserError):  # an unexpected failure: say which input it was
                res.error = f"{type(e).__name__} while predicting {names}: {res.error}"
            log(f"ERROR {case}: {res.error}")
            if debug_enabled():
                traceback.print_exc()
        results.append(res)
        _write_csv(csv_file, [r.row() for r in results])
    return results


def _warn(predictor: CoarseToFinePredictor, case: str, roi: ROI, log) -> None:
    """The WARNING lines of one case: no box (the whole volume), and classes the coarse model missed."""
    if roi.fallback and roi.fallback != MISSING_FALLBACK:
        log(f"WARNING {case}: {roi.fallback}; the fine model segmented the whole volume")
    if roi.missing:
        if predictor.rule.mode != "softmax":
            what = "ROI not widened (--roi-mode argmax)"
        elif roi.bbox is None:
            what = "the fine model segmented the whole volume"
        else:
            what = f"ROI grown by {roi.margin_mm:g} mm instead of {predictor.rule.margin_mm:g} mm"
        if roi.inner is not None:
            what += f" (a second pass of the fine model; from it only {predictor.class_list(roi.missing)})"
        log(f"WARNING {case}: the coarse prediction has no {predictor.class_list(roi.missing)}, which every training "
            f"case has; {what}")


def model_folder(dataset, trainer: str, plans: str, configuration: str) -> str:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(dataset, trainer, plans, configuration)


def run_predict_c2f(args) -> int:
    from nnunet_ext.paths import resolve_dataset_name

    name = resolve_dataset_name(args.dataset)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda: no CUDA device is available here (use -device cpu)")
    tr_c, tr_f = args.trainer_coarse or args.trainer, args.trainer_fine or args.trainer
    folds = lambda f: None if f is None else [i if i == "all" else int(i) for i in f]  # noqa: E731
    t0 = time.perf_counter()
    predictor = CoarseToFinePredictor(model_folder(name, tr_c, args.plans, args.coarse_config),
                                      model_folder(name, tr_f, args.plans, args.fine_config),
                                      folds(args.folds_coarse or args.folds), folds(args.folds_fine or args.folds),
                                      args.checkpoint, device, args.step_size, args.tta, args.margin_mm,
                                      args.min_roi_voxels, roi_mode=args.roi_mode, fg_threshold=args.fg_threshold,
                                      min_component_ml=args.min_component_ml,
                                      missing_margin_mm=args.missing_margin_mm, always_present=args.always_present)
    print(f"predict-c2f: models loaded in {time.perf_counter() - t0:.1f} s ({tr_c} {args.coarse_config}, "
          f"{tr_f} {args.fine_config}, {device}, step {args.step_size}, TTA {'on' if args.tta else 'off'}, "
          f"{predictor.describe_rule()})")
    for note in predictor.notes:
        print(note)
    results = predict_folder(predictor, args.input, args.output, args.csv, args.resume)
    failed = [r.case for r in results if r.status == "failed"]
    ok = [r for r in results if r.status == "ok"]
    if ok:
        rows = [r.row() for r in ok]
        widened = sum(1 for r in ok if r.missing_classes)
        whole = sum(1 for r in ok if r.roi is None)
        print(f"predict-c2f: {len(ok)} case(s), mean {np.mean([r['total_s'] for r in rows]):.2f} s per case, "
              f"{100 * np.mean([r['network_share'] for r in rows]):.0f}% in the networks; ROI "
              f"{100 * np.mean([r.roi_fraction for r in ok]):.0f}% of the volume on average, {whole} case(s) on "
              f"the whole volume, {widened} with a class the coarse model missed")
    if failed:
        print(f"predict-c2f: {len(failed)} case(s) failed: {', '.join(failed)} (see the messages above)")
        return 1
    return 0
