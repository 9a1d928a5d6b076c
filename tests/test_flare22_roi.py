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
