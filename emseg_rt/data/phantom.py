"""Synthetic FIB-SEM phantoms of a pancreatic beta cell, with exact ground truth.

No real EM data can be downloaded where this project is built and tested, so it makes its own. A phantom
is a 3D volume (Z, Y, X) in which every object is a 3D body (slices through it change with depth):

- label 1, nucleus: a large lumpy ellipsoid with a double envelope (outer and inner membrane around a
  pale perinuclear space), blotchy chromatin, a dark heterochromatin rim and a dense nucleolus;
- label 2, mitochondria: elongated, bending, sometimes branching tubes (chains of capsules) with a double
  membrane and cristae (dark lamellae across the tube axis) in a darker matrix;
- label 3, granules: many small insulin granules, spheres with a very dark, often eccentric dense core, a
  pale halo and a thin limiting membrane (the label is the whole membrane-bound granule);
- distractors, label 0: cell membranes (wavy sheets between neighbouring cells), ER-like membrane sheets,
  and empty pale vesicles with a dark rim (granules without a core);
- image formation: FIB-SEM contrast (membranes and cores dark on a mid-grey cytoplasm), Gaussian blur,
  Poisson (shot) and Gaussian (read) noise, and a slow intensity drift along z.

Sizes are in xy pixels; `anisotropy` is the z step over the xy pixel size (objects span fewer slices
when it is > 1). The same (shape, seed, noise, anisotropy) gives the same bytes.

`write_phantom` writes one as OME-Zarr 0.5 through `emseg_rt.io`: the image at the root, the ground truth
in `labels/ground_truth` (`GROUND_TRUTH`) with class names and colours (readable by napari, neuroglancer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from emseg_rt.constants import DEFAULT_CLASSES, GROUND_TRUTH  # noqa: F401  (GROUND_TRUTH re-exported)
from emseg_rt.checks import check_seed
from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import write_volume_with_labels

BACKGROUND, NUCLEUS, MITOCHONDRIA, GRANULES = 0, 1, 2, 3
CLASS_NAMES = DEFAULT_CLASSES  # labels 1, 2, 3

# Grey values before blur and noise (FIB-SEM back-scatter contrast, inverted: membranes are dark).
CYTOPLASM = 150.0
MEMBRANE = 70.0
NUCLEOPLASM = 128.0
CHROMATIN = 92.0
NUCLEOLUS = 70.0
PERINUCLEAR = 165.0
MITO_MATRIX = 108.0
CRISTAE = 72.0
GRANULE_CORE = 38.0
GRANULE_HALO = 196.0
VESICLE_LUMEN = 182.0


@dataclass(frozen=True)
class Phantom:
    """image (Z, Y, X) uint8 and labels (Z, Y, X) uint8 (0 background, 1 nucleus, 2 mitochondria, 3 granules)."""

    image: np.ndarray
    labels: np.ndarray
    seed: int
    noise: float
    anisotropy: float


def _check(shape: tuple[int, int, int], noise: float, anisotropy: float) -> None:
    if len(shape) != 3 or any(int(s) != s for s in shape):
        raise EmsegError(f"phantom shape must be three integers Z,Y,X, got {shape!r}")
    z, y, x = shape
    if z < 1 or y < 32 or x < 32:
        raise EmsegError(f"phantom shape {z},{y},{x} is too small: need Z >= 1 and Y, X >= 32")
    if z * y * x > 512 * 1024 * 1024:
        raise EmsegError(f"phantom shape {z},{y},{x} is too large for memory (at most 512 Mi voxels)")
    if not 0.0 <= noise <= 10.0:
        raise EmsegError(f"--noise must be between 0 and 10, got {noise}")
    if not 0.25 <= anisotropy <= 10.0:
        raise EmsegError(f"--anisotropy must be between 0.25 and 10, got {anisotropy}")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=sigma, mode="wrap")
    field -= field.mean()
    field /= field.std() + 1e-8
    return field


def _coarse_field(rng: np.random.Generator, shape: tuple[int, int, int], scale: float, aniso: float) -> np.ndarray:
    """A smooth random field with correlation length ~`scale` px, computed coarse and zoomed (fast)."""
    factor = max(1, int(scale // 3))
    coarse = tuple(max(2, -(-s // f)) for s, f in zip(shape, (max(1, int(factor / aniso)), factor, factor)))
    sig = (scale / max(1, int(factor / aniso)) / aniso / 2, scale / factor / 2, scale / factor / 2)
    small = _smooth_field(rng, coarse, tuple(max(0.5, s) for s in sig))
    zoom = [s / c for s, c in zip(shape, coarse)]
    big = ndimage.zoom(small, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    big -= big.mean()
    big /= big.std() + 1e-8
    return big.astype(np.float32)


def _segment_distance(
    pz: np.ndarray, py: np.ndarray, px: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points to segment a→b (physical units) and the axial coordinate t (px along the segment)."""
    ab = b - a
    length = float(np.linalg.norm(ab)) + 1e-8
    direction = ab / length
    rel_z, rel_y, rel_x = pz - a[0], py - a[1], px - a[2]
    t = rel_z * direction[0] + rel_y * direction[1] + rel_x * direction[2]
    tc = np.clip(t, 0.0, length)
    dz = rel_z - tc * direction[0]
    dy = rel_y - tc * direction[1]
    dx = rel_x - tc * direction[2]
    return np.sqrt(dz * dz + dy * dy + dx * dx), t


def _random_unit(rng: np.random.Generator, flat: float) -> np.ndarray:
    """A random direction (z, y, x); `flat` < 1 shrinks its z part (tubes lie mostly in-plane)."""
    v = rng.standard_normal(3)
    v[0] *= flat
    return v / (np.linalg.norm(v) + 1e-8)


def generate_phantom(
    shape: tuple[int, int, int] = (32, 256, 256), seed: int = 0, noise: float = 1.0, anisotropy: float = 1.0
) -> Phantom:
    """Make one phantom volume.

    shape:       (Z, Y, X) voxels; Y, X >= 32.
    seed:        every random choice comes from numpy's default_rng(seed).
    noise:       multiplies the shot- and read-noise levels (0 = noise-free, 1 = typical FIB-SEM, 2 = poor).
    anisotropy:  z voxel size / xy pixel size.
    returns      Phantom(image (Z, Y, X) uint8, labels (Z, Y, X) uint8).
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    _check(shape, noise, anisotropy)
    rng = np.random.default_rng(check_seed(seed))
    nz, ny, nx = shape
    aniso = float(anisotropy)
    extent = np.array([nz * aniso, ny, nx], dtype=np.float64)  # physical size (z, y, x)
    zz = (np.arange(nz, dtype=np.float32) * aniso).reshape(-1, 1, 1)
    yy = np.arange(ny, dtype=np.float32).reshape(1, -1, 1)
    xx = np.arange(nx, dtype=np.float32).reshape(1, 1, -1)
    sampling = (aniso, 1.0, 1.0)

    image = np.full(shape, CYTOPLASM, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    occupied = np.zeros(shape, dtype=bool)  # where no further object may be placed

    # Cytoplasm texture: faint ribosome-like mottling.
    image += 6.0 * _smooth_field(rng, shape, (0.8 / aniso, 0.8, 0.8))

    # --- cell membranes: wavy sheets between this cell and its neighbours ------------------------------
    n_sheets = int(rng.integers(1, 3))
    sheet_wobble = _coarse_field(rng, shape, 40.0, aniso)
    for _ in range(n_sheets):
        normal = _random_unit(rng, 0.3)
        offset_point = extent * rng.uniform(0.05, 0.95, size=3)
        signed = (
            (zz - offset_point[0]) * normal[0] + (yy - offset_point[1]) * normal[1] + (xx - offset_point[2]) * normal[2]
        ) + 6.0 * sheet_wobble
        image[np.abs(signed) < 1.1] = MEMBRANE
        image[(signed > 1.1) & (signed < 4.0)] += 12.0  # a sliver of the neighbour's paler cytoplasm edge

    # --- nucleus ------------------------------------------------------------------------------------------
    side = float(min(ny, nx))
    radius = np.clip(side * rng.uniform(0.24, 0.32), 12.0, 220.0)
    radii = radius * np.array([rng.uniform(0.8, 1.1), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
    center = np.array(
        [extent[0] * rng.uniform(0.3, 0.7), ny * rng.uniform(0.25, 0.75), nx * rng.uniform(0.25, 0.75)]
    )
    rho = np.sqrt(
        ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    )
    lumps = _coarse_field(rng, shape, radius * 0.5, aniso)
    nucleus = (rho + 0.06 * lumps) < 1.0
    if nucleus.any():
        depth = ndimage.distance_transform_edt(nucleus, sampling=sampling).astype(np.float32)  # inside, px
        chromatin = _smooth_field(rng, shape, (2.0 / aniso, 2.0, 2.0))
        inner = nucleus & (depth >= 4.0)
        nuc_grey = NUCLEOPLASM + 10.0 * chromatin
        nuc_grey = np.where(chromatin > 0.9, CHROMATIN + 6.0 * chromatin, nuc_grey)
        nuc_grey = np.where(depth < 9.0, nuc_grey - 18.0 * (1.0 - (depth - 4.0) / 5.0).clip(0, 1), nuc_grey)
        nucleolus_c = center + radii * rng.uniform(-0.35, 0.35, size=3)
        nucleolus_r = radius * rng.uniform(0.12, 0.2)
        nucleolus = (
            ((zz - nucleolus_c[0]) ** 2 + (yy - nucleolus_c[1]) ** 2 + (xx - nucleolus_c[2]) ** 2) < nucleolus_r**2
        )
        nuc_grey = np.where(nucleolus, NUCLEOLUS + 8.0 * chromatin, nuc_grey)
        image[inner] = nuc_grey[inner]
        image[nucleus & (depth < 1.6)] = MEMBRANE  # outer nuclear membrane
        image[nucleus & (depth >= 1.6) & (depth < 2.6)] = PERINUCLEAR  # perinuclear space
        image[nucleus & (depth >= 2.6) & (depth < 4.0)] = MEMBRANE + 5.0  # inner nuclear membrane
        labels[nucleus] = NUCLEUS
        outside = ndimage.distance_transform_edt(~nucleus, sampling=sampling)
        occupied |= outside < 3.0
        del depth, outside, chromatin, nuc_grey, inner, nucleolus
    del rho, lumps

    # --- mitochondria -------------------------------------------------------------------------------------
    volume_px = float(extent.prod())
    n_mito = max(1, int(rng.poisson(volume_px / 90_000.0)))
    mito = np.zeros(shape, dtype=bool)
    mito_dist = np.full(shape, np.inf, dtype=np.float32)  # distance to the nearest mitochondrion axis
    mito_axial = np.zeros(shape, dtype=np.float32)  # axial coordinate along that axis
    mito_radius = np.zeros(shape, dtype=np.float32)
    for _ in range(n_mito):
        r = rng.uniform(4.5, 7.0)
        period = rng.uniform(5.0, 7.0)
        phase = rng.uniform(0, period)
        for _attempt in range(20):
            start = extent * rng.uniform(0.0, 1.0, size=3)
            iz, iy, ix = int(start[0] / aniso), int(start[1]), int(start[2])
            if not occupied[min(iz, nz - 1), min(iy, ny - 1), min(ix, nx - 1)]:
                break
        # a random walk of segments, with a branch now and then
        stack = [(start, _random_unit(rng, 0.35), int(rng.integers(2, 7)))]
        axial_offset = 0.0
        while stack:
            point, direction, n_segments = stack.pop()
            for _seg in range(n_segments):
                length = rng.uniform(8.0, 18.0)
                direction = direction + 0.5 * _random_unit(rng, 0.35)
                direction /= np.linalg.norm(direction)
                end = point + length * direction
                lo = np.maximum(np.minimum(point, end) - r - 1, 0)
                hi = np.minimum(np.maximum(point, end) + r + 2, extent)
                z0, z1 = int(lo[0] / aniso), int(np.ceil(hi[0] / aniso))
                y0, y1, x0, x1 = int(lo[1]), int(np.ceil(hi[1])), int(lo[2]), int(np.ceil(hi[2]))
                if z1 > z0 and y1 > y0 and x1 > x0:
                    dist, axial = _segment_distance(zz[z0:z1], yy[:, y0:y1], xx[:, :, x0:x1], point, end)
                    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
                    closer = dist < mito_dist[box]
                    mito_dist[box] = np.where(closer, dist, mito_dist[box])
                    mito_axial[box] = np.where(closer, axial + axial_offset, mito_axial[box])
                    mito_radius[box] = np.where(closer, r, mito_radius[box])
                    mito[box] |= (dist < r) & ~occupied[box]
                axial_offset += length
                point = end
                if rng.random() < 0.15:
                    stack.append((point.copy(), _random_unit(rng, 0.35), int(rng.integers(1, 4))))
        # cristae period/phase per mitochondrion, stored through the axial coordinate
        sel = mito & (mito_radius == r)
        mito_axial[sel] = (mito_axial[sel] + phase) / period
    if mito.any():
        depth = ndimage.distance_transform_edt(mito, sampling=sampling).astype(np.float32)
        stripes = np.cos(2.0 * np.pi * mito_axial)
        grey = np.where(stripes > 0.55, CRISTAE, MITO_MATRIX)
        grey = np.where(depth < 1.4, MEMBRANE, np.where(depth < 2.2, MITO_MATRIX + 25.0, np.where(depth < 3.0, MEMBRANE + 10.0, grey)))
        image[mito] = grey[mito]
        labels[mito] = MITOCHONDRIA
        occupied |= ndimage.distance_transform_edt(~mito, sampling=sampling) < 2.0
        del depth, stripes, grey
    del mito_dist, mito_axial, mito_radius

    # --- ER-like membrane sheets in the cytoplasm (distractors) ------------------------------------------
    er_field = _coarse_field(rng, shape, 9.0, aniso)
    er_mask_field = _coarse_field(rng, shape, 30.0, aniso)
    grad = np.gradient(er_field, *sampling)
    grad_norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + 1e-3
    er = (np.abs(er_field) / grad_norm < 0.7) & (er_mask_field > 0.6) & ~occupied
    image[er] = MEMBRANE + 15.0
    del er_field, er_mask_field, grad, grad_norm, er

    # --- granules and empty vesicles ----------------------------------------------------------------------
    n_granules = int(rng.poisson(volume_px / 4_000.0))
    n_vesicles = int(rng.poisson(volume_px / 40_000.0))
    placed: list[tuple[np.ndarray, float]] = []
    for index in range(n_granules + n_vesicles):
        is_granule = index < n_granules
        r = rng.uniform(4.5, 7.0) if is_granule else rng.uniform(3.0, 5.0)
        for _attempt in range(12):
            c = np.array([rng.uniform(0, extent[0]), rng.uniform(0, ny), rng.uniform(0, nx)])
            ci = (min(int(c[0] / aniso), nz - 1), min(int(c[1]), ny - 1), min(int(c[2]), nx - 1))
            if occupied[ci]:
                continue
            if any(np.linalg.norm(c - pc) < r + pr + 1.5 for pc, pr in placed):
                continue
            break
        else:
            continue
        placed.append((c, r))
        z0, z1 = max(0, int((c[0] - r - 1) / aniso)), min(nz, int(np.ceil((c[0] + r + 2) / aniso)))
        y0, y1 = max(0, int(c[1] - r - 1)), min(ny, int(np.ceil(c[1] + r + 2)))
        x0, x1 = max(0, int(c[2] - r - 1)), min(nx, int(np.ceil(c[2] + r + 2)))
        if z1 <= z0 or y1 <= y0 or x1 <= x0:
            continue
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        dist = np.sqrt((zz[z0:z1] - c[0]) ** 2 + (yy[:, y0:y1] - c[1]) ** 2 + (xx[:, :, x0:x1] - c[2]) ** 2)
        body = (dist < r) & ~occupied[box]
        if is_granule:
            core_r = r * rng.uniform(0.45, 0.65)
            shift = rng.uniform(-1, 1, size=3) * (r - core_r - 1.2) * 0.6
            core_dist = np.sqrt(
                (zz[z0:z1] - c[0] - shift[0]) ** 2 + (yy[:, y0:y1] - c[1] - shift[1]) ** 2
                + (xx[:, :, x0:x1] - c[2] - shift[2]) ** 2
            )
            grey = np.where(dist > r - 1.2, MEMBRANE + 15.0, GRANULE_HALO)
            grey = np.where(core_dist < core_r, GRANULE_CORE + rng.uniform(-8, 12), grey)
            labels[box][body] = GRANULES
        else:
            grey = np.where(dist > r - 1.2, MEMBRANE + 10.0, VESICLE_LUMEN)
        image[box][body] = grey[body]
        occupied[box] |= dist < r + 1.0

    # --- image formation: blur, drift along z, shot and read noise -----------------------------------------
    image = ndimage.gaussian_filter(image, sigma=(0.7 / aniso, 0.9, 0.9))
    z_phase = rng.uniform(0, 2 * np.pi)
    drift = 1.0 + 0.06 * np.sin(2 * np.pi * np.arange(nz) / max(nz, 24) * rng.uniform(0.5, 1.5) + z_phase)
    drift += rng.uniform(-0.04, 0.04) * np.linspace(-1, 1, nz)
    image *= drift.astype(np.float32).reshape(-1, 1, 1)
    if noise > 0:
        photons_at_white = 600.0 / noise**2
        image = rng.poisson(np.clip(image, 0, None) * (photons_at_white / 255.0)).astype(np.float32)
        image *= 255.0 / photons_at_white
        image += rng.normal(0.0, 3.0 * noise, size=shape).astype(np.float32)
    return Phantom(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8), labels=labels, seed=seed, noise=noise, anisotropy=aniso
    )


def write_phantom(path: str | Path, phantom: Phantom) -> Path:
    """Write a phantom as a new OME-Zarr image: image at the root, ground truth in `labels/ground_truth`,
    root attribute `emseg_rt_phantom` recording how it was made; atomically (nothing at `path` until done)."""
    made_with = {"seed": phantom.seed, "noise": phantom.noise, "anisotropy": phantom.anisotropy,
                 "shape": list(phantom.image.shape), "classes": list(CLASS_NAMES)}
    try:
        return write_volume_with_labels(path, phantom.image, {GROUND_TRUTH: phantom.labels}, CLASS_NAMES,
                                        voxel_size=(phantom.anisotropy, 1.0, 1.0),
                                        attributes={"emseg_rt_phantom": made_with})
    except OSError as exc:  # read-only filesystem, permissions, disk full: nothing at `path` (atomic rename)
        raise EmsegError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location with "
                         "free space") from None
