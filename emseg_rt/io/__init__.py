"""zarr / OME-Zarr readers and writers (knows nothing of models or backends)."""

from emseg_rt.io.ome_zarr import (
    Volume,
    create_ome_image,
    create_ome_labels,
    list_label_groups,
    open_volume,
    read_label_metadata,
    read_volume,
    write_ome_image,
    write_ome_labels,
    write_volume_with_labels,
)

__all__ = [
    "Volume",
    "create_ome_image",
    "create_ome_labels",
    "list_label_groups",
    "open_volume",
    "read_label_metadata",
    "read_volume",
    "write_ome_image",
    "write_ome_labels",
    "write_volume_with_labels",
]
