"""2D image files that are not TIFF: PNG and JPEG, read with Pillow (already a dependency).

A PNG or JPEG holds one plane and no chunks, so it is decoded whole, once, after its header has been checked
against the memory available (Pillow's decompression-bomb limit, meant for web uploads, would refuse the
16k × 16k montages EM facilities write; the memory check takes its place). Grey-level modes are read as they are
stored (1 → bool as uint8 0/1, L → uint8, I;16 → uint16, I → int32, F → float32); a colour image is read as grey
only when its channels are equal (an EM image saved as RGB), and refused in one line otherwise, as is an
alpha channel that hides anything. PNG's pHYs resolution is in dots per inch (print size, not pixel size), so
the voxel size is 1.0 with no unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import Volume, check_fits_memory, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = {"1": np.uint8, "L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16,
               "I": np.int32, "F": np.float32}
_BYTES_PER_PIXEL = 4  # the most a decoded mode takes per pixel before it is reduced to grey


def image_volume(path: Path, key: str | None = None, level: int | None = None) -> Volume:
    """Open a PNG or JPEG file as a 2D Volume (Y, X), decoded into memory. EmsegError (one line) for a file Pillow
    cannot read, a colour image, or one too large for the memory available."""
    if key or level not in (None, 0):
        raise EmsegError(f"input {path} is a single 2D image: it has no key or pyramid level to choose")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the memory check below takes the place of Pillow's bomb limit
        with Image.open(path) as image:
            width, height = image.size
            check_fits_memory(width * height * _BYTES_PER_PIXEL, f"its {height}×{width} pixels", f"input {path}",
                              "convert it to a tiled TIFF or OME-Zarr")
            plane = _grey(image, path)
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for truncated or unknown files
        raise EmsegError(f"input {path} could not be read as an image: {first_line(exc)}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return Volume(path, plane, ("y", "x"), (1.0, 1.0), (None, None), format="image")


def _grey(image: Image.Image, path: Path) -> np.ndarray:
    """The image's pixels (H, W) as a grey-level array; EmsegError for colour or a meaningful alpha channel."""
    mode = image.mode
    if mode in _GREY_MODES:
        return np.array(image, dtype=_GREY_MODES[mode])  # a writable copy
    if mode == "P":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode not in ("LA", "RGB", "RGBA"):
        raise EmsegError(f"input {path} has pixel mode {mode}; segment reads grey-level images (L, I;16, I, F) "
                         "and RGB images whose channels are equal")
    pixels = np.asarray(image)
    colour, alpha = (pixels[..., :1], pixels[..., 1:]) if mode == "LA" else (pixels[..., :3], pixels[..., 3:])
    if alpha.size and not np.all(alpha == alpha.flat[0]):
        raise EmsegError(f"input {path} has a transparency (alpha) channel that varies; save it without one")
    if not np.all(colour == colour[..., :1]):
        raise EmsegError(f"input {path} is a colour image (its {mode} channels differ); segment reads grey-level EM "
                         "images: convert it to grey first")
    return np.ascontiguousarray(colour[..., 0])
