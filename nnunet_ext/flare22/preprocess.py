"""``ROICropPreprocessor``: nnU-Net's ``DefaultPreprocessor`` for the ``3d_fine`` configuration.

Before nnU-Net's own steps (transpose -> crop to non-zero -> normalise -> resample), each training case is cropped
to the region of interest the fine model will see at inference: the bounding box of its labels grown by the margin
of the plans (``configurations["3d_fine"]["nnunet_ext"]["roi_margin_mm"]``, 20 mm by default) and clipped to the
volume (``nnunet_ext.flare22.roi.roi_from_mask``). A case without labels keeps its whole volume.

The crop is recorded the way nnU-Net records its own non-zero crop: ``shape_before_cropping`` is the shape of the
whole volume and ``bbox_used_for_cropping`` the ROI crop composed with nnU-Net's crop (both in nnU-Net's transposed
axis order). nnU-Net's export (final validation of a trainer, ``nnUNetv2_predict``) therefore puts predictions back
into the whole volume: validation Dice is computed on the full reference segmentations, as for stock nnU-Net.

nnU-Net only finds preprocessors inside its own package, so the plans keep ``DefaultPreprocessor`` (nnU-Net's CLIs
accept ``3d_fine``; ``nnUNetv2_predict -c 3d_fine`` on a whole image predicts the whole volume at full resolution)
and ``nnunet-ext plan-c2f`` runs this class for the training data.
"""
from __future__ import annotations

from typing import Union

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

from nnunet_ext.flare22.roi import DEFAULT_MARGIN_MM, roi_from_mask


def roi_margin_mm(configuration_manager) -> float:
    """The ROI margin a configuration was planned with (``DEFAULT_MARGIN_MM`` if it says nothing)."""
    return float(configuration_manager.configuration.get("nnunet_ext", {}).get("roi_margin_mm", DEFAULT_MARGIN_MM))


class ROICropPreprocessor(DefaultPreprocessor):
    """nnU-Net's preprocessing of a case cropped to its labels' bounding box + margin."""

    def run_case_npy(self, data: np.ndarray, seg: Union[np.ndarray, None], properties: dict, plans_manager,
                     configuration_manager, dataset_json: Union[dict, str]):
        if seg is None:  # no labels, no ROI: nnU-Net's preprocessing of the whole volume
            return super().run_case_npy(data, seg, properties, plans_manager, configuration_manager, dataset_json)
        roi = roi_from_mask(seg[0] > 0, properties["spacing"], roi_margin_mm(configuration_manager))
        full_shape = data.shape[1:]
        box = roi.bbox or [[0, n] for n in full_shape]
        crop = (slice(None),) + roi.slices(full_shape)
        data, seg, properties = super().run_case_npy(data[crop], seg[crop], properties, plans_manager,
                                                     configuration_manager, dataset_json)
        tf = plans_manager.transpose_forward
        offset = [box[i][0] for i in tf]  # ROI start in nnU-Net's transposed axis order
        properties["bbox_used_for_cropping"] = [[int(a + o), int(b + o)] for (a, b), o in
                                                zip(properties["bbox_used_for_cropping"], offset)]
        properties["shape_before_cropping"] = tuple(int(full_shape[i]) for i in tf)
        properties["nnunet_ext_roi"] = [[int(a), int(b)] for a, b in box]  # original axis order
        return data, seg, properties
