"""Dense CRF (``nnunet_ext.stego.crf``) and ``nnunet-ext stego-crf`` (``nnunet_ext.stego.cli``, ``.refine``).

The CRF is checked against a brute-force mean field written from the equations (dense N x N matrices, float64), and
for the properties it is used for: noise inside constant regions is removed, a boundary moves to the image edge
(bilateral kernel), the pooled bilateral path agrees with the exact one on a smooth image. The CLI runs on
prediction folders written by nnU-Net's own preprocessing (``DefaultPreprocessor.run_case``: transpose, crop) and
export (``export_prediction_from_logits(..., save_probabilities=True)``), so axis order and geometry are nnU-Net's.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from nnunet_ext.stego.crf import DEFAULT_MAX_PIXELS, _bilateral_operator, _gaussian_operator, dense_crf, image_to_guide


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the kernels are small, and a second thread only waits for a busy core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _step_image(h=40, w=40, edge=20, seed=0):
    """RGB image on 0..255: two constant colours (60 left of column ``edge``, 190 right) plus noise of std 2."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((3, h, w), 60.0)
    img[:, :, edge:] = 190.0
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, edge:] = 1
    return img + 2 * torch.randn(3, h, w, generator=g), truth


def _probs_from_labels(labels, confidence=0.65):
    """Two-class probabilities with ``confidence`` on the given label map."""
    one = torch.stack([(labels == 0).float(), (labels == 1).float()])
    return one * (2 * confidence - 1) + (1 - confidence)


def _brute_force_crf(image, probs, iterations=10, gw=3.0, gs=1.0, bw=4.0, bxy=67.0, brgb=3.0):
    """Mean field from the equations of the module docstring with dense matrices (float64, untruncated kernels)."""
    k, h, w = probs.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1)
    col = image.reshape(image.shape[0], -1).t().double()
    d2p, d2c = torch.cdist(pos, pos) ** 2, torch.cdist(col, col) ** 2
    mats = []
    for kern in (torch.exp(-d2p / (2 * gs ** 2)), torch.exp(-d2p / (2 * bxy ** 2) - d2c / (2 * brgb ** 2))):
        kern = kern - torch.eye(h * w, dtype=torch.float64)  # j != i
        d = kern.sum(1)
        mats.append(kern / torch.sqrt(d[:, None] * d[None, :]))  # D^-1/2 K D^-1/2
    unary = -torch.log(probs.reshape(k, -1).double().clamp(min=1e-8))
    q = torch.softmax(-unary, 0)
    for _ in range(iterations):
        m = gw * (mats[0] @ q.t()).t() + bw * (mats[1] @ q.t()).t()
        q = torch.softmax(-unary - (m.sum(0, keepdim=True) - m), 0)  # Potts: mu(l, l') = [l != l']
    return q.reshape(k, h, w).float()


# ---------------------------------------------------------------------------------------------------- dense_crf


def test_iterations_zero_returns_input_and_output_is_a_distribution():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, 17, 23, generator=g), 0)
    image = torch.rand(1, 17, 23, generator=g) * 255  # one channel: replicated
    assert torch.allclose(dense_crf(image, probs, iterations=0), probs, atol=1e-6)
    out = dense_crf(image.numpy(), probs.numpy())  # arrays are accepted too
    assert out.shape == (3, 17, 23) and out.dtype == torch.float32
    assert torch.allclose(out.sum(0), torch.ones(17, 23), atol=1e-5) and (out >= 0).all()
    assert not torch.allclose(out, probs, atol=1e-3)


def test_matches_brute_force_mean_field():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(3, 14, 11, generator=g) * 30 + 100
    image[:, :, 6:] += 10
    probs = torch.softmax(2 * torch.randn(3, 14, 11, generator=g), 0)
    ours = dense_crf(image, probs)
    assert (ours - _brute_force_crf(image, probs)).abs().max() < 1e-3
    # the operators themselves, N not a multiple of the kernel block (256): the symmetric block bookkeeping
    h, w = 23, 29
    guide = torch.rand(3, h, w, generator=g) * 40
    x = torch.rand(2, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1)
    d2p = torch.cdist(pos, pos) ** 2
    d2c = torch.cdist(guide.reshape(3, -1).t().double(), guide.reshape(3, -1).t().double()) ** 2
    xf = x.reshape(2, -1).t().double()
    bilateral = _bilateral_operator(guide, 5.0, 7.0, max_pixels=h * w)
    for op, kern, tol in ((bilateral, torch.exp(-d2p / 50 - d2c / 98), 1e-4),
                          (_gaussian_operator((h, w), 1.0, "cpu"), torch.exp(-d2p / 2), 2e-3)):  # truncated at 4 std
        ref = ((kern - torch.eye(h * w, dtype=torch.float64)) @ xf).t().reshape(2, h, w).float()
        assert (op(x) - ref).abs().max() < tol * ref.abs().max()


def test_noise_inside_constant_regions_is_removed():
    image, truth = _step_image()
    g = torch.Generator().manual_seed(3)
    noisy = torch.where(torch.rand(truth.shape, generator=g) < 0.3, 1 - truth, truth)  # 30 % of the pixels flipped
    probs = _probs_from_labels(noisy)
    before = (probs.argmax(0) == truth).float().mean()
    after = (dense_crf(image, probs).argmax(0) == truth).float().mean()
    assert before < 0.75 and after > 0.98


def test_boundary_moves_to_the_image_edge():
    """The probabilities put the boundary at column 14, the image's edge is at 20: the bilateral kernel (pixels of
    the same colour agree) moves it to the edge; the Gaussian kernel alone (no image) does not."""
    image, truth = _step_image()
    pred = torch.zeros_like(truth)
    pred[:, 14:] = 1
    probs = _probs_from_labels(pred, 0.7)
    acc = lambda q: (q.argmax(0) == truth).float().mean().item()  # noqa: E731
    assert acc(probs) == pytest.approx(34 / 40)
    assert acc(dense_crf(image, probs)) > 0.99
    assert acc(dense_crf(image, probs, bilateral_weight=0.0)) < 0.9


def test_pooled_bilateral_agrees_with_exact_on_a_smooth_image():
    h = w = 64
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    image = torch.stack([128 + 20 * torch.sin(xx / 13), 128 + 20 * torch.cos(yy / 11),
                         128 + 20 * torch.sin((xx + yy) / 17)])
    g = torch.Generator().manual_seed(4)
    logit = 2 * torch.sin(xx / 9) * torch.cos(yy / 7) + torch.randn(h, w, generator=g)
    probs = torch.softmax(torch.stack([logit, -logit]), 0)
    exact = dense_crf(image, probs, max_pixels=h * w).argmax(0)
    pooled = dense_crf(image, probs, max_pixels=h * w // 4).argmax(0)  # 2 x 2 cells
    assert (exact != probs.argmax(0)).float().mean() > 0.1  # the CRF does change things here
    assert (exact == pooled).float().mean() > 0.95
    assert DEFAULT_MAX_PIXELS >= 4096


def test_guide_maps_any_range_to_0_255():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4, 30, 30, generator=g)  # z-scored, one channel, 3D
    guide = image_to_guide(z)
    assert guide.shape == (3, 4, 30, 30) and guide.dtype == torch.float32
    assert guide.min() == 0 and guide.max() == 255 and torch.equal(guide[0], guide[2])
    lo, hi = np.percentile(z.numpy(), [0.5, 99.5])
    mid = float(z.flatten()[7])
    if lo < mid < hi:
        assert float(guide[0].flatten()[7]) == pytest.approx((mid - lo) / (hi - lo) * 255, abs=1e-3)
    two = image_to_guide(np.stack([np.linspace(-1000, 3000, 100), np.full(100, 7.0)]).reshape(2, 10, 10))
    assert two.shape == (2, 10, 10) and two[0].max() == 255 and (two[1] == 0).all()  # channels kept; constant -> 0


# ---------------------------------------------------------------------------------------------------- stego-crf


def _plans(transpose_forward, spacing, reader_writer):
    """A minimal nnU-Net plans dict: what preprocessing (run_case) and export read, with no resampling."""
    tb = [int(i) for i in np.argsort(transpose_forward)]
    res = lambda is_seg, order: {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}  # noqa
    return {"dataset_name": "Dataset990_CRFTest", "plans_name": "nnUNetPlans", "image_reader_writer": reader_writer,
            "transpose_forward": list(transpose_forward), "transpose_backward": tb, "label_manager": "LabelManager",
            "experiment_planner_used": "ExperimentPlanner",
            "foreground_intensity_properties_per_channel": {str(c): {} for c in range(3)},  # unused by ZScore
            "configurations": {"c": {
                "data_identifier": "c", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": [8, 8, 8], "spacing": [spacing[i] for i in transpose_forward],
                "normalization_schemes": ["ZScoreNormalization"] * 3, "use_mask_for_norm": [False] * 3,
                "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": res(False, 3),
                "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": res(True, 1),
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": res(False, 1),
                "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}}}


def _nnunet_predict(image_files, probs_reader_order, plans, dataset_json, pred_dir, case):
    """Write <case><ending>, <case>.npz, <case>.pkl as nnUNetv2_predict --save_probabilities does: nnU-Net's
    preprocessing gives the properties (transpose, crop to non-zero), the 'network output' is the given
    probabilities (in the reader's axis order) moved to nnU-Net's internal order, nnU-Net's export writes them."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration("c")
    data, _, props = DefaultPreprocessor(verbose=False).run_case(image_files, None, pm, cm, dataset_json)
    logits = np.log(np.clip(probs_reader_order, 1e-6, 1)).transpose([0, *[i + 1 for i in pm.transpose_forward]])
    bbox = props["bbox_used_for_cropping"]
    logits = logits[(slice(None), *[slice(a, b) for a, b in bbox])]
    assert logits.shape[1:] == data.shape[1:]
    export_prediction_from_logits(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), props, cm, pm,
                                  dataset_json, str(pred_dir / case), save_probabilities=True, num_threads_torch=1)
    return props


def _run(argv):
    from nnunet_ext.stego.cli import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["stego-crf", *map(str, argv)])
    return args.func(args)


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "structure": 1}, "numTraining": 1,
                "file_ending": ".nii.gz"}


def test_cli_refines_nifti_prediction_keeping_geometry(tmp_path, capsys):
    """3D NIfTI (z, y, x) = (3, 20, 16), anisotropic, rotated, transposed internally by nnU-Net ([0, 2, 1]) and
    cropped (zero border): the refined segmentation has the image's geometry and its boundary on the image's edge."""
    import SimpleITK as sitk

    images, pred, out = tmp_path / "imagesTs", tmp_path / "pred", tmp_path / "out"
    images.mkdir()
    pred.mkdir()
    z, y, x, edge = 3, 20, 16, 9
    rng = np.random.default_rng(0)
    arr = np.where(np.arange(x) < edge, 300.0, 900.0)[None, None].repeat(z, 0).repeat(y, 1)
    arr = arr + rng.normal(0, 5, arr.shape)
    arr[:, :, :2] = 0  # nnU-Net crops this away (crop to non-zero)
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((0.8, 0.7, 3.0))
    img.SetOrigin((10.0, -5.0, 2.5))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(images / "case_a_0000.nii.gz"))

    truth = np.broadcast_to(np.arange(x) >= edge, (z, y, x)).astype(np.uint8)
    pred_labels = np.broadcast_to(np.arange(x) >= edge - 3, (z, y, x))  # boundary 3 voxels off the edge
    probs = np.stack([np.where(pred_labels, 0.3, 0.7), np.where(pred_labels, 0.7, 0.3)])
    plans = _plans([0, 2, 1], (3.0, 0.7, 0.8), "SimpleITKIO")
    props = _nnunet_predict([str(images / "case_a_0000.nii.gz")], probs, plans, DATASET_JSON, pred, "case_a")
    assert props["bbox_used_for_cropping"] != [[0, z], [0, x], [0, y]]  # cropped, in nnU-Net's (transposed) order
    (pred / "dataset.json").write_text(json.dumps(DATASET_JSON))  # nnUNetv2_predict leaves these
    (pred / "plans.json").write_text(json.dumps(plans))
    saved = np.load(pred / "case_a.npz")["probabilities"]
    assert saved.shape == (2, z, y, x)  # nnU-Net writes them in the reader's axis order

    assert _run(["-i", images, "-p", pred, "-o", out, "--save_probabilities"]) == 0
    res = sitk.ReadImage(str(out / "case_a.nii.gz"))
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(res, attr)() == pytest.approx(getattr(img, attr)()), attr
    seg = sitk.GetArrayFromImage(res)
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case_a.nii.gz")))
    inside = np.s_[:, :, 2:]  # the cropped-away border stays background (probability 1)
    assert (before[inside] == truth[inside]).mean() < 0.9
    assert (seg[inside] == truth[inside]).mean() > 0.99 and (seg[:, :, :2] == 0).all()
    refined = np.load(out / "case_a.npz")["probabilities"]
    assert refined.shape == saved.shape and np.allclose(refined.sum(0), 1, atol=1e-3)
    assert (out / "case_a.pkl").is_file() and (out / "dataset.json").is_file()

    assert _run(["-i", images, "-p", pred, "-o", out]) == 0  # resumable: nothing left to do
    assert "refined 0 case(s), skipped 1" in capsys.readouterr().out


def test_cli_png_with_dataset_id_and_missing_npz(tmp_path, monkeypatch):
    """2D RGB PNG (NaturalImage2DIO, arrays (3, 1, y, x)), dataset.json from $nnUNet_raw via -d, no dataset.json /
    plans.json in the prediction folder; then a case without its .npz gets the clear error."""
    from skimage import io

    from nnunet_ext.stego.refine import CRFError

    raw = tmp_path / "raw"
    (raw / "Dataset990_CRFTest").mkdir(parents=True)
    dj = dict(DATASET_JSON, channel_names={"0": "R", "1": "G", "2": "B"}, file_ending=".png")
    (raw / "Dataset990_CRFTest" / "dataset.json").write_text(json.dumps(dj))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)

    images, pred, out = tmp_path / "imagesTs", tmp_path / "pred", tmp_path / "out"
    images.mkdir()
    pred.mkdir()
    image, truth = _step_image(h=24, w=32, edge=18)
    io.imsave(str(images / "img1_0000.png"), image.clamp(0, 255).round().byte().permute(1, 2, 0).numpy(),
              check_contrast=False)
    pred_labels = torch.zeros_like(truth)
    pred_labels[:, 13:] = 1
    probs = _probs_from_labels(pred_labels, 0.7).numpy()[:, None]  # (K, 1, y, x)
    _nnunet_predict([str(images / "img1_0000.png")], probs, _plans([0, 1, 2], (999, 1, 1), "NaturalImage2DIO"),
                    dj, pred, "img1")

    assert _run(["-i", images, "-p", pred, "-o", out, "-d", 990, "--iterations", 5]) == 0
    seg = io.imread(str(out / "img1.png"))
    assert seg.shape == (24, 32) and set(np.unique(seg)) <= {0, 1}
    assert (seg == truth.numpy()).mean() > 0.99

    io.imsave(str(images / "img2_0000.png"), io.imread(str(images / "img1_0000.png")), check_contrast=False)
    io.imsave(str(pred / "img2.png"), seg, check_contrast=False)  # predicted without --save_probabilities
    with pytest.raises(CRFError, match=r"img2\.npz not found.*--save_probabilities"):
        _run(["-i", images, "-p", pred, "-o", out, "-d", 990])


def test_cli_help_states_the_default_max_pixels(capsys):
    with pytest.raises(SystemExit):
        _run(["-h"])
    assert f"default: {DEFAULT_MAX_PIXELS}" in " ".join(capsys.readouterr().out.split())
