"""Volume readers (zarr / OME-Zarr, N5, HDF5, TIFF, URLs, in-memory arrays) and the OME-Zarr writer.

Knows nothing of models or backends. `open_volume` is the one way in; `readers` says which library reads what.
`ome_zarr` is the one writer of images and label images (`pyramid` lays out and fills their levels),
`zarr_reader.label_names` the one lookup of an image's label images, and `label_images` finds the label
image to score (`emseg-rt eval`).
"""

from emseg_rt.io.label_images import LabelImage, open_label_image
from emseg_rt.io.ome_zarr import (
    create_ome_image,
    create_ome_labels,
    write_ome_image,
    write_ome_labels,
    write_volume_with_labels,
)
from emseg_rt.io.readers import is_array, open_volume, read_volume, source_name
from emseg_rt.io.volume import ArrayView, SqueezedArray, Volume
from emseg_rt.io.zarr_reader import is_url, list_label_groups, read_label_metadata

__all__ = [
    "ArrayView",
    "LabelImage",
    "SqueezedArray",
    "Volume",
    "create_ome_image",
    "create_ome_labels",
    "is_array",
    "is_url",
    "list_label_groups",
    "open_label_image",
    "open_volume",
    "read_label_metadata",
    "read_volume",
    "source_name",
    "write_ome_image",
    "write_ome_labels",
    "write_volume_with_labels",
]
