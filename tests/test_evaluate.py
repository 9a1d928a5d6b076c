"""``nnunet-ext evaluate``: metrics on hand-made masks with known values, folder evaluation on NIfTI and
PNG files, the error messages, and the CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from nnunet_ext.evaluation import EvaluationError, case_metrics, evaluate_folders
from nnunet_ext.evaluation.metrics import binary_metrics

SPACING = (2.0, 1.0, 0.5)  # (z, y, x) mm: anisotropic; x, the finest axis, is the one we shift along


def cube(shape=(10, 10, 12), start=2, n=4, shift=0, axis=2):
    """A cube of n^3 voxels at [start, start+n) on every axis, moved by ``shift`` voxels along ``axis``."""
    a = np.zeros(shape, np.uint8)
    sl = [slice(start, start + n)] * 3
    sl[axis] = slice(start + shift, start + shift + n)
    a[tuple(sl)] = 1
    return a


def cube_nsd_at_zero(n, spacing):
    """NSD of an n^3 cube against itself shifted by one voxel along x, for a tolerance below that shift.

    The surface (Nikolov et al.; MONAI use_subvoxels=True) is made of elements on the grid of voxel corners,
    i.e. on the faces of the box [-0.5, n-0.5]^3 (in voxels), with (n-1)^2 face elements per face, n-1 edge
    elements per box edge and 8 corner elements. Their areas (marching-cubes patches, mm^2):
      face perpendicular to x: sy*sz (y: sx*sz, z: sx*sy);
      edge along x: sx * hypot(sy, sz) / 2 (cuts the 2x2 corner of the y-z plane diagonally; likewise y, z);
      corner: the triangle through the three half-edge points, sqrt((sx sy)^2 + (sy sz)^2 + (sx sz)^2) / 8.
    Reference A and prediction B = A + 1 voxel in x. An element of A is at distance 0 from B's surface when it
    lies on a y- or z-face of A at x >= +0.5 (B's side faces cover x in [0.5, n+0.5]); every other element is at
    distance sx: the whole face x = -0.5 (its (n-1)^2 face elements, its 2 edges along y, 2 along z, and 4
    corners) and the inner part of the face x = n-0.5 ((n-1)^2 face elements; its rim is on B's side faces).
    By symmetry B -> A gives the same share, so NSD = 1 - (area at distance sx) / (total area).
    """
    sz, sy, sx = spacing
    m = n - 1
    face_x, face_y, face_z = sy * sz, sx * sz, sx * sy
    edge_x, edge_y, edge_z = sx * math.hypot(sy, sz) / 2, sy * math.hypot(sx, sz) / 2, sz * math.hypot(sx, sy) / 2
    corner = math.sqrt((sx * sy) ** 2 + (sy * sz) ** 2 + (sx * sz) ** 2) / 8
    total = 2 * m * m * (face_x + face_y + face_z) + 4 * m * (edge_x + edge_y + edge_z) + 8 * corner
    off = 2 * m * m * face_x + 2 * m * (edge_y + edge_z) + 4 * corner
    return 1 - off / total


# --------------------------------------------------------------------------------------------- metrics
def test_identical_masks_2d_and_3d():
    a3 = cube()
    row = case_metrics(a3, a3.copy(), SPACING, [1], 1.0)[0]
    assert (row["dice"], row["hd95"], row["vol_diff"]) == (1.0, 0.0, 0.0)
    assert row["nsd"] == pytest.approx(1.0, abs=1e-6)
    assert row["vol_ref"] == row["vol_pred"] == pytest.approx(64 * 2.0 * 1.0 * 0.5)
    assert row["empty"] == "" and row["class"] == 1

    a2 = np.zeros((20, 30), np.int64)
    a2[3:9, 4:20] = 2
    row = case_metrics(a2, a2.copy(), (1.5, 0.7), [2], 0.0)[0]
    assert (row["dice"], row["hd95"]) == (1.0, 0.0)
    assert row["nsd"] == pytest.approx(1.0, abs=1e-6)  # tolerance 0: only coincident surface counts
    assert row["vol_ref"] == pytest.approx(6 * 16 * 1.5 * 0.7)  # an area, mm^2


@pytest.mark.parametrize("axis", [2, 0])
def test_cube_shifted_by_one_voxel(axis):
    # shifting along the finest axis: spacing x = 0.5 mm (axis 2), or z made the finest (axis 0)
    spacing = SPACING if axis == 2 else SPACING[::-1]  # axis 0: the same case with x and z swapped
    ref, pred = cube(shape=(12, 12, 12)), cube(shape=(12, 12, 12), shift=1, axis=axis)
    s = spacing[axis]
    rows = case_metrics(ref, pred, spacing, [1], {1: 0.25})
    r = rows[0]
    # overlap: n*n*(n-1) voxels of n^3 each -> Dice = (n-1)/n
    assert r["dice"] == pytest.approx(3 / 4)
    # Surface voxels (face-connected erosion) of the reference: the 4^3 - 2^3 = 56 shell voxels. Each is either
    # also a surface voxel of the prediction (distance 0) or one shift (s = 0.5 mm) away from one: the slab
    # left behind (x = start) and the inner part of the far face, 12 + 2*4 = 20 of 56 (> 5%), and no distance
    # exceeds s because s <= every other spacing. Both directions alike, so HD95 = s.
    assert r["hd95"] == pytest.approx(s)
    assert r["vol_diff"] == 0.0
    # NSD at 0.25 mm (< s): the area share of zero-distance surface elements (see cube_nsd_at_zero)
    assert r["nsd"] == pytest.approx(cube_nsd_at_zero(4, SPACING), abs=1e-6)  # SPACING = (other, other, shift axis)
    # at a tolerance of one shift every surface element is within reach
    assert case_metrics(ref, pred, spacing, [1], s)[0]["nsd"] == pytest.approx(1.0, abs=1e-6)


def test_cube_shifted_by_two_voxels():
    ref, pred = cube(shape=(12, 12, 14), n=6), cube(shape=(12, 12, 14), n=6, shift=2)
    r = case_metrics(ref, pred, SPACING, [1], 1.0)[0]
    assert r["dice"] == pytest.approx(4 / 6)
    # largest surface distance 2 * 0.5 mm (the far face and the first slab), held by 52 of 152 shell voxels
    assert r["hd95"] == pytest.approx(1.0)
    assert r["nsd"] == pytest.approx(1.0, abs=1e-6)  # tolerance 1 mm = the shift


def test_shifted_square_2d():
    sy, sx, n = 1.0, 0.5, 4
    a = np.zeros((8, 10), np.uint8)
    a[2:6, 2:6] = 1
    b = np.roll(a, 1, axis=1)
    r = case_metrics(a, b, (sy, sx), [1], 0.25)[0]
    assert r["dice"] == pytest.approx(0.75)
    assert r["hd95"] == pytest.approx(sx)
    # Contour (marching squares through pixel centres): n-1 segments per side (length sx along x, sy along y)
    # and 4 corner cuts of half the pixel diagonal. At distance sx: the whole left side with its 2 corners and
    # the inner part of the right side; the rest coincides with the shifted square.
    diag = 0.5 * math.hypot(sy, sx)
    total = 2 * (n - 1) * (sx + sy) + 4 * diag
    off = 2 * (n - 1) * sy + 2 * diag
    assert r["nsd"] == pytest.approx(1 - off / total, abs=1e-6)
    assert r["vol_ref"] == pytest.approx(16 * sy * sx)


def test_hd95_is_a_percentile_not_the_maximum():
    ref = cube()
    pred = ref.copy()
    pred[9, 9, 11] = 1  # one stray voxel far away: 1 of 57 surface voxels of the prediction
    r = case_metrics(ref, pred, SPACING, [1], 1.0)[0]
    # pred -> ref: 56 zeros and one large distance; its 95th percentile (linear interpolation at rank
    # 0.95 * 56 = 53.2 of the sorted list) is 0; ref -> pred: all 0. HD95 = max(0, 0) = 0.
    assert r["hd95"] == 0.0
    assert r["dice"] == pytest.approx(2 * 64 / (64 + 65))


def test_empty_masks_follow_the_documented_convention():
    a = cube()
    empty = np.zeros_like(a)
    ref_empty, pred_empty, both = (case_metrics(x, y, SPACING, [1], 1.0)[0]
                                   for x, y in ((empty, a), (a, empty), (empty, empty)))
    for r, which in ((ref_empty, "ref"), (pred_empty, "pred")):
        assert (r["dice"], r["nsd"], r["empty"]) == (0.0, 0.0, which)
        assert math.isnan(r["hd95"])
    assert ref_empty["vol_diff"] == pytest.approx(64.0) and pred_empty["vol_diff"] == pytest.approx(-64.0)
    assert both["empty"] == "both" and all(math.isnan(both[k]) for k in ("dice", "nsd", "hd95"))
    assert both["vol_ref"] == both["vol_pred"] == both["vol_diff"] == 0.0


def test_crop_is_exact_and_regions_are_unions():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    shape, spacing = (14, 20, 18), (2.0, 0.7, 1.3)

    def blobs():
        x = gaussian_filter(rng.normal(size=shape), 2)
        return (x > 0.05).astype(np.uint8) + 2 * (x < -0.15)  # touches the image border

    ref, pred = blobs(), blobs()
    rows = case_metrics(ref, pred, spacing, [1, 2, (1, 2)], 1.5, names={(1, 2): "both"})
    assert [r["name"] for r in rows] == ["1", "2", "both"]
    for r in rows:
        members = r["class"] if isinstance(r["class"], tuple) else (r["class"],)
        full = binary_metrics(np.isin(ref, members), np.isin(pred, members), spacing, 1.5)  # uncropped
        for k in ("dice", "nsd", "hd95", "vol_ref", "vol_pred"):
            assert r[k] == pytest.approx(full[k], rel=1e-6, abs=1e-6), k


def test_case_metrics_rejects_bad_input():
    a = cube()
    with pytest.raises(EvaluationError, match="shapes differ"):
        case_metrics(a, a[1:], SPACING, [1])
    with pytest.raises(EvaluationError, match="spacing"):
        case_metrics(a, a, (1.0, 1.0), [1])
    with pytest.raises(EvaluationError, match="no NSD tolerance for class"):
        case_metrics(a, a, SPACING, [1, 2], {1: 1.0})
    with pytest.raises(EvaluationError, match="non-integer"):
        case_metrics(a * 0.5, a, SPACING, [1])


# --------------------------------------------------------------------------------------------- folders
def write_nifti(path, arr, spacing_zyx, origin=(0.0, 0.0, 0.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))  # SimpleITK: (x, y, z)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def nifti_folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    ref = cube(shape=(12, 12, 12))
    ref2 = ref.copy()
    ref2[8:10, 8:10, 8:10] = 2
    write_nifti(gt / "case_a.nii.gz", ref, SPACING)
    write_nifti(pred / "case_a.nii.gz", cube(shape=(12, 12, 12), shift=1), SPACING)  # shifted along x
    write_nifti(gt / "case_b.nii.gz", ref2, SPACING)
    write_nifti(pred / "case_b.nii.gz", ref, SPACING)  # class 2 missed
    return gt, pred


def test_evaluate_nifti_folders(nifti_folders, tmp_path):
    gt, pred = nifti_folders
    (pred / "dataset.json").write_text("{}")  # nnUNetv2_predict leaves such files: not cases
    out = tmp_path / "out"
    res = evaluate_folders(gt, pred, labels=None, tolerance=1.0, num_processes=1, out_dir=out, progress=False)
    assert res["cases"] == ["case_a", "case_b"]
    assert res["missing_in_pred"] == [] and res["extra_in_pred"] == []
    rows = {(r["case"], r["class"]): r for r in res["per_case"]}
    assert set(rows) == {("case_a", 1), ("case_a", 2), ("case_b", 1), ("case_b", 2)}
    a1 = rows[("case_a", 1)]
    # spacing read from the file, in nnU-Net's (z, y, x) order: the x shift is 0.5 mm
    assert a1["dice"] == pytest.approx(0.75) and a1["hd95"] == pytest.approx(0.5)
    assert a1["vol_ref"] == pytest.approx(64 * 1.0)
    assert rows[("case_a", 2)]["empty"] == "both"
    b2 = rows[("case_b", 2)]
    assert b2["empty"] == "pred" and b2["dice"] == 0.0 and math.isnan(b2["hd95"])
    assert b2["vol_diff"] == pytest.approx(-8 * 1.0)
    # class 2: Dice mean over case_b only (case_a: both empty), HD95 undefined, one one-sided case
    pc2 = res["per_class"][2]
    assert (pc2["n"], pc2["dice"], pc2["n_hd95"], pc2["n_one_empty"], pc2["n_both_empty"]) == (1, 0.0, 0, 1, 1)
    assert math.isnan(pc2["hd95"])
    pc1 = res["per_class"][1]
    assert pc1["dice"] == pytest.approx((0.75 + 1.0) / 2)  # case_b: class 1 predicted exactly
    assert res["overall"]["dice"] == pytest.approx((pc1["dice"] + pc2["dice"]) / 2)
    assert res["overall"]["hd95"] == pytest.approx(pc1["hd95"])  # class 2 has no HD95

    with open(out / "per_case.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tolerance"] == {"1": 1.0, "2": 1.0}
    assert summary["per_class"]["2"]["hd95"] is None  # NaN written as null
    assert "spacing_source" in summary and summary["missing_in_pred"] == []
    assert (out / "summary.md").read_text().startswith("| class |")
    with open(out / "summary.csv") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["1", "2", "overall"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_labels_from_dataset_json_and_per_class_tolerance(nifti_folders, tmp_path):
    gt, pred = nifti_folders
    dj = {"labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz"}
    res = evaluate_folders(gt, pred, tolerance={"organ": 0.25, 2: 3.0}, num_processes=1, dataset_json=dj,
                           progress=False)
    assert res["per_class"][1]["name"] == "organ" and res["per_class"][2]["name"] == "lesion"
    assert res["tolerance"] == {1: 0.25, 2: 3.0}
    a1 = next(r for r in res["per_case"] if r["case"] == "case_a" and r["class"] == 1)
    assert a1["nsd"] == pytest.approx(cube_nsd_at_zero(4, SPACING), abs=1e-6)
    # a region (union of labels) and inline JSON labels like dataset.json's
    res = evaluate_folders(gt, pred, labels='{"any": [1, 2]}', num_processes=1, progress=False)
    assert list(res["per_class"]) == [(1, 2)]


def test_evaluate_png_folders(tmp_path):
    from PIL import Image

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    a = np.zeros((8, 10), np.uint8)
    a[2:6, 2:6] = 1
    Image.fromarray(a).save(gt / "img1.png")
    Image.fromarray(np.roll(a, 1, axis=1)).save(pred / "img1.png")
    Image.fromarray(a).save(pred / "extra.png")
    with pytest.warns(UserWarning, match="extra"):
        res = evaluate_folders(gt, pred, labels={1: "fg"}, num_processes=1, progress=False)
    r = res["per_case"][0]
    # 2D on the (y, x) plane with spacing 1 per pixel (nnU-Net's dummy 999 first axis dropped)
    assert (r["dice"], r["hd95"], r["vol_ref"], r["name"]) == (0.75, 1.0, 16.0, "fg")
    assert r["nsd"] == pytest.approx(1.0, abs=1e-6)
    assert res["extra_in_pred"] == ["extra"] and res["volume_unit"] == "mm^2"


def test_pool_over_cases(tmp_path):
    """Two worker processes (spawn); empty predictions keep the workers off torch/MONAI, so this stays fast."""
    from PIL import Image

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(3):
        a = np.zeros((6, 7), np.uint8)
        a[1:3 + i, 2:4] = 1
        Image.fromarray(a).save(gt / f"c{i}.png")
        Image.fromarray(np.zeros_like(a)).save(pred / f"c{i}.png")
    res = evaluate_folders(gt, pred, num_processes=2, progress=False)
    assert res["cases"] == ["c0", "c1", "c2"]
    assert [r["vol_diff"] for r in res["per_case"]] == [-4.0, -6.0, -8.0]
    assert res["per_class"][1]["n_one_empty"] == 3


def test_missing_case_is_named(nifti_folders):
    gt, pred = nifti_folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"1 of 2 reference cases have no prediction .*case_b"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)
    res = evaluate_folders(gt, pred, num_processes=1, progress=False, allow_missing=True)
    assert res["cases"] == ["case_a"] and res["missing_in_pred"] == ["case_b"]


def test_geometry_mismatch_names_the_file(nifti_folders):
    gt, pred = nifti_folders
    write_nifti(pred / "case_b.nii.gz", cube(shape=(12, 12, 12)), (2.0, 1.0, 0.6))
    with pytest.raises(EvaluationError, match=r"pred/case_b\.nii\.gz: geometry differs .*spacing"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)
    write_nifti(pred / "case_b.nii.gz", cube(shape=(12, 12, 12)), SPACING, origin=(0.0, 5.0, 0.0))
    with pytest.raises(EvaluationError, match=r"case_b\.nii\.gz: geometry differs .*origin"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)
    write_nifti(pred / "case_b.nii.gz", cube(shape=(12, 12, 11)), SPACING)
    with pytest.raises(EvaluationError, match=r"case_b\.nii\.gz: shape \(12, 12, 11\) differs"):
        evaluate_folders(gt, pred, num_processes=1, progress=False)


# --------------------------------------------------------------------------------------------- CLI
def test_cli_writes_per_case_csv(nifti_folders, tmp_path, capsys):
    from nnunet_ext.cli import main

    gt, pred = nifti_folders
    out = tmp_path / "cli_out"
    rc = main(["evaluate", "-gt", str(gt), "-pred", str(pred), "-o", str(out), "-np", "1", "-q",
               "--labels", '{"background": 0, "organ": 1, "lesion": 2}', "--tolerance", "1.0,2=2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| class |" in printed and "organ" in printed
    with open(out / "per_case.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert {"case", "class", "name", "dice", "nsd", "hd95", "vol_ref", "vol_pred", "vol_diff"} <= set(reader.fieldnames)
    assert len(rows) == 4 and {r["tolerance"] for r in rows if r["class"] == "2"} == {"2.0"}
    for name in ("summary.csv", "summary.md", "summary.json"):
        assert (out / name).is_file()


def test_cli_user_error_is_one_line_exit_2(nifti_folders, capsys):
    from nnunet_ext.cli import main

    gt, pred = nifti_folders
    (pred / "case_a.nii.gz").unlink()
    rc = main(["evaluate", "-gt", str(gt), "-pred", str(pred), "-np", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "case_a" in lines[0] and "Traceback" not in err
    assert main(["evaluate", "-gt", str(gt), "-pred", str(pred), "--tolerance", "1=x"]) == 2


def test_dataset_id_finds_dataset_json(nifti_folders, tmp_path, monkeypatch):
    from nnunet_ext.evaluation.evaluate import find_dataset_json, parse_labels

    raw = tmp_path / "raw"
    (raw / "Dataset777_Toy").mkdir(parents=True)
    (raw / "Dataset777_Toy" / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert find_dataset_json(777) == raw / "Dataset777_Toy" / "dataset.json"
    with pytest.raises(EvaluationError, match="dataset '778' not found"):
        find_dataset_json("778")
    gt, pred = nifti_folders
    from nnunet_ext.cli import main
    assert main(["evaluate", "-gt", str(gt), "-pred", str(pred), "-d", "777", "-np", "1", "-q",
                 "-o", str(tmp_path / "o")]) == 0
    with open(tmp_path / "o" / "per_case.csv") as f:
        assert {r["name"] for r in csv.DictReader(f)} == {"organ", "lesion"}
    # the label forms: API {value: name}, dataset.json {name: value}, JSON text of either, regions, ignore
    assert parse_labels({1: "a", 2: "b"}) == ({1: "a", 2: "b"}, None)
    assert parse_labels('{"1": "liver"}') == ({1: "liver"}, None)
    assert parse_labels({"background": 0, "wt": [1, 2, 3], "et": 3, "ignore": 4}) == ({(1, 2, 3): "wt", 3: "et"}, 4)
