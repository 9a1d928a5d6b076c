"""FLARE22 ROI logic: margin in mm with anisotropic spacing, clipping at the borders, largest components,
empty and tiny coarse predictions fall back to the whole volume, crop and paste round trip."""
import numpy as np

from nnunet_ext.flare22.roi import ROI, coarse_roi, margin_voxels, paste, roi_from_mask


def test_margin_in_mm_per_axis_with_anisotropic_spacing():
    assert margin_voxels((5.0, 0.8, 0.8), 20) == [4, 25, 25]
    assert margin_voxels((2.0, 1.0, 1.0), 20) == [10, 20, 20], "exact multiples are not rounded up"
    mask = np.zeros((40, 200, 200), bool)
    mask[10:20, 50:60, 80:90] = True
    roi = roi_from_mask(mask, (5.0, 0.8, 0.8), 20)
    assert roi.bbox == [[6, 24], [25, 85], [55, 115]] and roi.fallback is None


def test_clipped_at_the_borders():
    mask = np.zeros((10, 30, 30), bool)
    mask[0:2, 25:30, 3:5] = True
    assert roi_from_mask(mask, (1.0, 1.0, 1.0), 5).bbox == [[0, 7], [20, 30], [0, 10]]


def test_empty_and_tiny_predictions_fall_back_to_the_whole_volume():
    empty = roi_from_mask(np.zeros((8, 8, 8), bool), (1, 1, 1))
    assert empty.bbox is None and "empty" in empty.fallback
    tiny = np.zeros((8, 8, 8), bool)
    tiny[4, 4, 4] = True
    small = roi_from_mask(tiny, (1, 1, 1), min_voxels=10)
    assert small.bbox is None and "1 voxels" in small.fallback
    assert small.slices((8, 8, 8)) == (slice(0, 8),) * 3


def test_largest_component_per_label_drops_stray_blobs():
    seg = np.zeros((20, 40, 40), np.uint8)
    seg[5:10, 5:15, 5:15] = 1        # organ 1
    seg[18:20, 38:40, 38:40] = 1     # a stray false positive of organ 1 far away
    seg[6:9, 20:25, 20:25] = 2       # organ 2
    roi = coarse_roi(seg, (1, 1, 1), labels=[1, 2], margin_mm=0)
    assert roi.bbox == [[5, 10], [5, 25], [5, 25]], "the stray blob does not stretch the box"


def test_crop_and_paste_round_trip():
    vol = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    roi = ROI([[1, 4], [2, 7], [0, 5]])
    part = vol[roi.slices(vol.shape)]
    back = paste(vol.shape, part, roi, background=-1)
    assert np.array_equal(back[roi.slices(vol.shape)], part) and (back == -1).sum() == vol.size - part.size


def test_box_on_a_preprocessed_grid_maps_back_to_original_voxels():
    from nnunet_ext.flare22.roi import box_in_original

    # original (x=40, y=60, z=20) volume, transposed (2, 0, 1) -> (20, 40, 60), cropped to non-zero at
    # [[2, 18], [0, 40], [10, 50]] (16 x 40 x 40), resampled by a factor 1/2 to an (8, 20, 20) grid
    props = {"shape_after_cropping_and_before_resampling": (16, 40, 40),
             "bbox_used_for_cropping": [[2, 18], [0, 40], [10, 50]]}
    box = box_in_original([[1, 3], [5, 6], [0, 20]], (8, 20, 20), props, (2, 0, 1))
    # transposed axis 0 = original z: grid 1..3 -> crop 2..6 -> +2; axis 1 = original x: 10..12; axis 2 = y: 0..40 +10
    assert box == [[10, 12], [10, 50], [4, 8]]
    # a non-integer scale rounds outwards, never beyond the crop
    props = {"shape_after_cropping_and_before_resampling": (10, 10, 10), "bbox_used_for_cropping": [[0, 10]] * 3}
    assert box_in_original([[1, 2], [0, 3], [2, 3]], (3, 3, 3), props, (0, 1, 2)) == [[3, 7], [0, 10], [6, 10]]


# --- the softmax ROI (issue 27): argmax + uncertain foreground, missing always-present classes ---------------------

def _probs(seg, n_classes=3, confidence=0.9):
    """Softmax-like probabilities whose argmax is ``seg``: ``confidence`` on the argmax class, the rest shared."""
    p = np.full((n_classes,) + seg.shape, (1 - confidence) / (n_classes - 1), np.float32)
    for c in range(n_classes):
        p[c][seg == c] = confidence
    return p


def _set(p, where, values):
    """Probabilities ``values`` (one per class) at ``where``."""
    for c, v in enumerate(values):
        p[c][where] = v


def _rule(**kw):
    from nnunet_ext.flare22.roi import ROIRule
    kw.setdefault("margin_mm", 0)
    kw.setdefault("min_voxels", 1)
    return ROIRule(**kw)


def test_softmax_roi_keeps_an_organ_the_argmax_missed():
    """Organ 2 is nowhere in the argmax (background wins with 0.45) but has 0.55 foreground probability: the softmax
    ROI holds it, the argmax ROI (the rule before) does not."""
    from nnunet_ext.flare22.roi import roi_from_probabilities

    seg = np.zeros((20, 40, 40), np.uint8)
    seg[5:10, 5:15, 5:15] = 1
    p = _probs(seg, confidence=0.96)
    kidney = (slice(8, 12), slice(28, 34), slice(30, 36))  # far from organ 1, 4 x 6 x 6 voxels
    _set(p, kidney, (0.45, 0.10, 0.45))
    assert not np.any(p.argmax(0) == 2)
    soft = roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule())
    assert soft.bbox == [[5, 12], [5, 34], [5, 36]] and soft.fallback is None and soft.missing == []
    old = roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule(mode="argmax"))
    assert old.bbox == [[5, 10], [5, 15], [5, 15]]
    # below the threshold (foreground 0.15 < 0.2): left out
    _set(p, kidney, (0.85, 0.05, 0.10))
    assert roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule()).bbox == [[5, 10], [5, 15], [5, 15]]
    # a lower threshold takes it again: not for its size (0.15 x 144 voxels < 1 mL), but because it holds more of
    # class 2 (0.1 x 144 voxels) than any other candidate (organ 1: 0.02 x 500)
    assert roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule(fg_threshold=0.12)).bbox == [[5, 12], [5, 34], [5, 36]]


def test_softmax_roi_ignores_a_stray_uncertain_voxel_but_keeps_a_large_uncertain_blob():
    from nnunet_ext.flare22.roi import roi_from_probabilities

    seg = np.zeros((20, 40, 40), np.uint8)
    seg[5:10, 5:15, 5:15] = 1
    seg[6:9, 20:25, 20:25] = 2
    p = _probs(seg)
    _set(p, (19, 39, 39), (0.6, 0.3, 0.1))      # one uncertain voxel in a far corner
    _set(p, (0, 0, 39), (0.1, 0.1, 0.8))        # and one confident stray voxel of class 2 (argmax 2)
    assert roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule()).bbox == [[5, 10], [5, 25], [5, 25]]
    # a blob of 4 x 5 x 5 = 100 voxels at foreground 0.5 (50 voxels expected) far away: kept when 50 voxels'
    # worth of volume reaches min_component_ml (1 mL: 40 voxels of 25 mm^3), not at 1 mm^3 per voxel (1000 voxels)
    blob = (slice(14, 18), slice(32, 37), slice(2, 7))
    _set(p, blob, (0.5, 0.35, 0.15))
    assert roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule()).bbox == [[5, 10], [5, 25], [5, 25]]
    big = roi_from_probabilities(p, (1, 5, 5), [1, 2], _rule())
    assert big.bbox == [[5, 18], [5, 37], [2, 25]]


def test_a_missing_always_present_class_is_named_and_widens_the_roi():
    from nnunet_ext.flare22.roi import MISSING_FALLBACK, roi_from_probabilities

    seg = np.zeros((30, 60, 60), np.uint8)
    seg[10:15, 20:30, 20:30] = 1
    p = _probs(seg)  # class 2 nowhere, not even as uncertain foreground
    rule = _rule(margin_mm=2, always_present=(1, 2), missing_margin_mm=10)
    roi = roi_from_probabilities(p, (1, 1, 1), [1, 2], rule)
    assert roi.missing == [2] and roi.margin_mm == 10 and roi.fallback is None
    assert roi.bbox == [[0, 25], [10, 40], [10, 40]] and roi.inner == [[8, 17], [18, 32], [18, 32]]
    # the found classes from the fine model on roi.inner, the missing one from the fine model on the larger box
    from nnunet_ext.flare22.roi import merge_widened

    wide = np.zeros(seg.shape, np.uint8)
    wide[10:15, 20:30, 20:30] = 1            # the organ, as the fine model saw it in the larger box
    wide[0:3, 10:13, 10:13] = 1              # a false positive of the larger box far away: dropped
    wide[20:24, 35:40, 35:40] = 2            # the missing class, outside roi.inner: kept (its largest component)
    wide[12, 25, 25] = 2                     # a stray voxel of it inside roi.inner: dropped
    wide[25:27, 5:7, 5:7] = 2                # and a smaller false positive far away: dropped
    inner = np.zeros((9, 14, 14), np.uint8)  # roi.inner's crop
    inner[2:7, 2:12, 2:12] = 1
    inner[3, 3, 3] = 3                       # what the fine model gives on roi.inner (class 3 too)
    merged = merge_widened(inner, wide, roi)
    expect = np.zeros(seg.shape, np.uint8)
    expect[8:17, 18:32, 18:32] = inner
    expect[20:24, 35:40, 35:40] = 2
    assert np.array_equal(merged, expect)
    # found: the normal margin
    seg[20:22, 40:42, 40:42] = 2
    roi = roi_from_probabilities(_probs(seg), (1, 1, 1), [1, 2], rule)
    assert roi.missing == [] and roi.margin_mm == 2 and roi.bbox == [[8, 24], [18, 44], [18, 44]] and roi.inner is None
    # the default larger margin is 3 x the margin; "whole" means the whole volume
    assert _rule(margin_mm=20).missing_margin_mm == 60
    assert _rule(margin_mm=20, missing_margin_mm=5).missing_margin_mm == 20, "never less than the margin"
    whole = roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule(always_present=(1, 2), missing_margin_mm="whole"))
    assert whole.bbox is None and whole.fallback == MISSING_FALLBACK and whole.missing == [2]
    assert whole.inner == [[10, 15], [20, 30], [20, 30]]  # margin 0 in _rule()
    # the argmax mode reports the missing class but keeps its ROI
    old = roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule(mode="argmax", margin_mm=2, always_present=(1, 2)))
    assert old.missing == [2] and old.bbox == [[8, 17], [18, 32], [18, 32]] and old.inner is None


def test_argmax_mode_is_the_rule_before():
    """On a noisy random segmentation the argmax mode gives exactly coarse_roi's box (largest component per class,
    margin, minimum size), and the softmax ROI always contains it."""
    from nnunet_ext.flare22.roi import roi_from_probabilities

    rng = np.random.default_rng(0)
    for _ in range(5):
        seg = np.zeros((16, 32, 32), np.uint8)
        for c in (1, 2, 3):
            a = rng.integers(0, [12, 26, 26])
            seg[a[0]:a[0] + 4, a[1]:a[1] + 6, a[2]:a[2] + 6] = c
        seg[rng.random(seg.shape) < 0.002] = rng.integers(1, 4)
        p = _probs(seg, 4, 0.7)
        p[0] = np.where(rng.random(seg.shape) < 0.01, 0.5, p[0])  # uncertain speckle
        old = coarse_roi(seg, (2.0, 1.0, 1.5), [1, 2, 3], margin_mm=3, min_voxels=10)
        new = roi_from_probabilities(p, (2.0, 1.0, 1.5), [1, 2, 3], _rule(mode="argmax", margin_mm=3, min_voxels=10))
        assert new.bbox == old.bbox and new.fallback == old.fallback
        soft = roi_from_probabilities(p, (2.0, 1.0, 1.5), [1, 2, 3], _rule(margin_mm=3, min_voxels=10))
        assert all(a <= c and d <= b for (a, b), (c, d) in zip(soft.bbox, old.bbox))


def test_empty_softmax_prediction_falls_back():
    from nnunet_ext.flare22.roi import roi_from_probabilities

    p = _probs(np.zeros((8, 8, 8), np.uint8), 3, 0.95)
    roi = roi_from_probabilities(p, (1, 1, 1), [1, 2], _rule(always_present=(1,)))
    assert roi.bbox is None and roi.fallback == "the coarse prediction is empty" and roi.missing == [1]


def test_rule_from_plans_old_and_new_records():
    from nnunet_ext.flare22.roi import ROIRule, parse_margin

    old = ROIRule.from_plans({"c2f": "fine", "roi_margin_mm": 8.0})
    assert (old.mode, old.margin_mm, old.fg_threshold, old.missing_margin_mm, old.always_present) == \
        ("softmax", 8.0, 0.2, 24.0, None)
    rule = ROIRule(margin_mm=10, fg_threshold=0.3, missing_margin_mm="whole", always_present=[3, 1])
    rec = rule.plans_record()
    assert rec["roi_missing_class_margin_mm"] == "whole" and rec["always_present_classes"] == [1, 3]
    assert ROIRule.from_plans(rec) == rule
    over = ROIRule.from_plans(rec, mode="argmax", always_present=None, fg_threshold=0.1)
    assert over.mode == "argmax" and over.fg_threshold == 0.1 and over.always_present == (1, 3)
    assert parse_margin("inf") == parse_margin("whole") == float("inf") and parse_margin("12.5") == 12.5
    for bad in ({"mode": "box"}, {"fg_threshold": 0}, {"fg_threshold": 1.5}, {"margin_mm": -1},
                {"missing_margin_mm": "far"}, {"margin_mm": "whole"}, {"min_component_ml": -1}):
        try:
            ROIRule(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_roi_fraction():
    assert ROI([[0, 4], [0, 5], [0, 10]]).fraction((8, 10, 10)) == 0.25 and ROI(None).fraction((3, 3, 3)) == 1.0
