"""Loading for STEGO training: every image (or slice) with its kNN partner, through nnU-Net's loader.

``KNNPairDataset`` lists the images of the kNN table (``knn_table.py``) that belong to the fold's training cases,
one identifier per image: ``<case>@<slice>``. ``load_case`` returns that single slice (a (C, 1, Y, X) volume, so
nnU-Net's 2D loader can only pick it) with the slice of its kNN partner appended as extra channels: the partner is
drawn uniformly from the image's neighbours of ranks 1..7 among the training images (STEGO), centred and cropped
or zero-padded to the image's size. nnU-Net's loader and training transforms then run unchanged: one crop and one
spatial augmentation for the pair (a different image at the same place), intensity augmentation per channel; the
trainer splits the channels again (first C: image, last C: partner).

Images are sampled uniformly (nnU-Net's 2D loader samples a case, then a slice); labels are never used for
sampling (the trainer turns foreground oversampling off). For a dataset with an ignore label (the placeholder
labels of an images-only dataset are all "ignore"), nnU-Net's loader centres each crop on an annotated pixel;
``annotated_key`` then makes every pixel of the slice a candidate (``uniform_locations``), i.e. uniform crops.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

SEP = "@"


def image_id(case: str, z: int) -> str:
    return f"{case}{SEP}{int(z)}"


def parse_image_id(identifier: str):
    case, z = identifier.rsplit(SEP, 1)
    return case, int(z)


def partner_lists(table: dict, case_ids: Sequence[str], ranks: int = 7) -> Dict[str, List[str]]:
    """image id -> its neighbours of ranks 1..``ranks`` among the images of ``case_ids`` (the image itself where
    there is no other image)."""
    cases, case_index, slices, nb = table["cases"], table["case_index"], table["slice"], table["neighbours"]
    keep = set(case_ids)
    allowed = np.array([str(cases[ci]) in keep for ci in case_index])
    ids = [image_id(cases[ci], z) for ci, z in zip(case_index, slices)]
    out = {}
    for i in np.flatnonzero(allowed):
        cand = [ids[j] for j in nb[i][1:] if allowed[j] and j != i][:ranks]
        out[ids[i]] = cand or [ids[i]]
    return out


def uniform_locations(properties: dict, shape, key, step: int = 2) -> dict:
    """``properties`` whose ``class_locations[key]`` lists every ``step``-th pixel of a (Z, Y, X) ``shape``, as
    (channel, z, y, x) rows: nnU-Net's loader, which centres crops on a random entry, then crops uniformly."""
    grid = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in shape], indexing="ij"), -1).reshape(-1, len(shape))
    locations = np.concatenate((np.zeros((len(grid), 1), dtype=grid.dtype), grid), 1)
    return {**properties, "class_locations": {**properties.get("class_locations", {}), key: locations}}


class UniformCropDataset(nnUNetDatasetBlosc2):
    """nnU-Net's dataset; with ``annotated_key`` set, crops are uniform although the labels are "ignore"."""

    def __init__(self, folder: str, identifiers=None, folder_with_segs_from_previous_stage: str = None,
                 annotated_key=None):
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage)
        self.annotated_key = annotated_key

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        if self.annotated_key is not None:
            properties = uniform_locations(properties, data.shape[1:], self.annotated_key)
        return data, seg, seg_prev, properties


class KNNPairDataset(UniformCropDataset):
    def __init__(self, folder: str, identifiers=None, folder_with_segs_from_previous_stage: str = None,
                 table: dict = None, ranks: int = 7, annotated_key=None):
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage, annotated_key)
        if table is None:
            raise ValueError("KNNPairDataset needs the kNN table")
        self.partners = partner_lists(table, self.identifiers, ranks)
        missing = sorted(set(self.identifiers) - {parse_image_id(i)[0] for i in self.partners})
        if missing:
            raise ValueError(f"the kNN table lacks {len(missing)} training case(s), e.g. {', '.join(missing[:3])}")
        self.cases = list(self.identifiers)
        self.identifiers = sorted(self.partners)

    def _slice(self, identifier: str):
        case, z = parse_image_id(identifier)
        data, seg, seg_prev, properties = nnUNetDatasetBlosc2.load_case(self, case)
        sl = (slice(None), slice(z, z + 1))
        return (np.asarray(data[sl], dtype=np.float32), np.asarray(seg[sl]),
                None if seg_prev is None else np.asarray(seg_prev[sl]), properties)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self._slice(identifier)
        options = self.partners[identifier]
        partner = self._slice(options[np.random.randint(len(options))])[0]
        bbox = [[(p - d) // 2, (p - d) // 2 + d] for p, d in zip(partner.shape[1:], data.shape[1:])]
        paired = np.concatenate((data, crop_and_pad_nd(partner, bbox, 0)))
        if self.annotated_key is not None:
            properties = uniform_locations(properties, data.shape[1:], self.annotated_key)
        return paired, seg, seg_prev, properties
