"""Dictionary transforms the BraTS pipeline needs beyond MONAI's own."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor, NibabelReader
from monai.transforms import CenterSpatialCrop, MapTransform, ResizeWithPadOrCropd, Spacingd
from monai.utils import ensure_tuple

from bundle.data.layouts import MODALITIES, case_id_from_path

logger = logging.getLogger(__name__)


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` with the bundle's geometry rule: a file's affine is nibabel's
    ``image.affine`` (sform, else qform, else pixdim; see :mod:`bundle.data.validation`), as
    validation, evaluation and the report read it.

    MONAI's reader first "corrects" a header whose pixdim disagrees with its affine, taking the
    qform (even one whose code says it is unset) when that matches pixdim: a 1 mm sform with a
    2 mm pixdim then loads at 2 mm, and the outputs come out in another geometry than the input.
    """

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: object) -> object:
        filenames = ensure_tuple(data)
        self.filenames = filenames
        images = [nib.load(name, **{**self.kwargs, **kwargs}) for name in filenames]
        return images if len(filenames) > 1 else images[0]


class ReorderChannelsd(MapTransform):
    """Put the image channels in the bundle's t1, t1ce, t2, flair order.

    The order comes with each case (``channel_order`` in its datalist entry), since a 4-D MSD
    file stores FLAIR first while separate BraTS files are loaded in the right order already.
    An entry without one (MONAI Label gives each case as one 4-D image and nothing else) is
    taken to be in the bundle's order, the metadata's ``channel_def``.
    """

    def __init__(self, keys: KeysCollection, order_key: str = "channel_order") -> None:
        super().__init__(keys)
        self.order_key = order_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        order = [int(i) for i in d.get(self.order_key, range(len(MODALITIES)))]
        for key in self.key_iterator(d):
            if d[key].shape[0] != len(MODALITIES):
                raise ValueError(
                    f"{source_name(d[key])}: image has {d[key].shape[0]} channels, expected "
                    f"{len(MODALITIES)} ({', '.join(MODALITIES)})"
                )
            if order != list(range(len(MODALITIES))):
                d[key] = d[key][order]
        return d


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` for data dicts that hold strings under names like ``image_path``.

    MONAI 1.6.1's ``Spacingd`` updates every entry named ``<key>_...`` as if it were a meta
    dict, which fails on MONAI Label's ``image_path`` (the request's file name); such entries
    are set aside while it runs.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d


class FieldOfViewd(ResizeWithPadOrCropd):
    """MONAI's ``ResizeWithPadOrCropd`` to the network's field of view (centre crop or pad), with
    a warning naming the case when the crop cuts brain away: those voxels are not segmented at
    inference, nor seen in training. The brain is where ``image_key`` is not 0, so this must
    come after :class:`bundle.data.normalisation.BrainNormalized` (0 outside the brain)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        image_key: str = "image",
        **kwargs: object,
    ) -> None:
        super().__init__(keys, spatial_size, **kwargs)
        self.image_key = image_key
        self.spatial_size = spatial_size
        self.centre = CenterSpatialCrop(spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        image = data[self.image_key]
        brain = torch.as_tensor(image != 0).any(0, keepdim=True)
        total, kept = int(brain.sum()), int(self.centre(brain).sum())
        if kept < total:
            spacing = getattr(image, "pixdim", torch.ones(3))[:2]
            sizes = zip(self.spatial_size[:2], spacing, strict=True)
            field = " x ".join(f"{n * float(mm):.0f}" for n, mm in sizes)
            logger.warning(
                f"case {case_id_from_path(source_name(image))}: the brain reaches beyond the "
                f"central {field} mm the network sees: {100 * (total - kept) / total:.1f} % of "
                "its voxels are cut away, not segmented (or trained on)"
            )
        return super().__call__(data, lazy=lazy)


class SelectSlicesd(MapTransform):
    """Pick a fixed, evenly spread set of axial slices of a volume, half with tumour.

    Validation needs the same slices every epoch (random crops would make its Dice noisy), and
    half of them with tumour so that the Dice says something. Returns one 2-D dict per slice.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", num_slices: int = 8) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.num_slices = num_slices

    def _slice_indices(self, image: torch.Tensor, label: torch.Tensor) -> list[int]:
        tumour = label.reshape(-1, label.shape[-1]).any(0)
        brain = (image != 0).reshape(-1, image.shape[-1]).any(0)
        with_tumour = torch.nonzero(tumour).flatten().tolist()
        without = torch.nonzero(brain & ~tumour).flatten().tolist()
        n_tumour = min(len(with_tumour), (self.num_slices + 1) // 2)
        n_other = min(len(without), self.num_slices - n_tumour)
        return sorted(_evenly(with_tumour, n_tumour) + _evenly(without, n_other))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        indices = self._slice_indices(d[first], d[self.label_key])
        out = []
        for z in indices:
            item = dict(d)
            for key in self.key_iterator(d):
                item[key] = d[key][..., z]
            item["slice_index"] = z
            out.append(item)
        return out


def slice_offsets(context_slices: int, step: int = 1) -> list[int]:
    """The axial offsets a slice's input channels come from, in channel order: the slice itself
    first (so that its four modalities keep channels 0 to 3), then -s, +s, ..., -ks, +ks for
    ``context_slices`` k and ``step`` s."""
    return [0] + [sign * k * step for k in range(1, context_slices + 1) for sign in (-1, 1)]


class SliceContextd(MapTransform):
    """Give every axial slice of a (C, H, W, D) volume its ``context_slices`` neighbours on each
    side, ``step`` slices apart, as further channels: (C * (2k + 1), H, W, D), in
    :func:`slice_offsets`' order, the first and last slices repeated beyond the volume's ends.

    A 2-D network then sees the tumour's extent above and below the slice it segments (2.5-D
    input) while training, validation and inference still draw and sample single slices.
    ``context_slices`` 0 leaves the volume as it is.

    Args:
        keys: the image keys.
        context_slices: the neighbours on each side, k.
        step: the slices from one neighbour to the next.
    """

    def __init__(self, keys: KeysCollection, context_slices: int = 0, step: int = 1) -> None:
        super().__init__(keys)
        if context_slices < 0 or step < 1:
            raise ValueError(f"need context_slices >= 0, step >= 1; got {context_slices}, {step}.")
        self.context_slices = context_slices
        self.step = step

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if not self.context_slices:
            return d
        for key in self.key_iterator(d):
            volume = d[key]
            plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
            depth = plain.shape[-1]
            index = torch.arange(depth)
            parts = [
                plain[..., (index + offset).clamp(0, depth - 1)]
                for offset in slice_offsets(self.context_slices, self.step)
            ]
            d[key] = with_meta_of(torch.cat(parts, 0), volume)
        return d


def tumour_slice_indices(label: torch.Tensor, count: int) -> list[int]:
    """``count`` axial slices spread evenly over those of a (C, H, W, D) label with tumour, for
    benchmarks on the slices a sampler must get right."""
    tumour = torch.nonzero(label.flatten(0, -2).any(0)).flatten().tolist()
    return [tumour[int(i)] for i in np.linspace(0, len(tumour) - 1, count + 2)[1:-1]]


def _evenly(values: list[int], n: int) -> list[int]:
    if n <= 0:
        return []
    picks = np.linspace(0, len(values) - 1, n + 2)[1:-1] if n < len(values) else range(len(values))
    return [values[int(round(i))] for i in picks]


def with_meta_of(data: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``data`` with the metadata and transform stack of ``like`` (when that is a MetaTensor)."""
    if isinstance(like, MetaTensor):
        return MetaTensor(data, meta=like.meta, applied_operations=like.applied_operations)
    return data


def source_name(tensor: torch.Tensor) -> str:
    meta = getattr(tensor, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "image"))
