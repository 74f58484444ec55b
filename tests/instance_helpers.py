"""Whole-volume references for `segment --instances`, written out with scipy (shared by the instance tests)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from emseg_rt.runtime.instance_rules import InstanceRule, rule_for, split_component


def first_appearance(ids: np.ndarray) -> np.ndarray:
    """Nonzero IDs renumbered 1..N in the order they first appear in C (scan) order, written out here (not
    `runtime.instances.relabel_by_first_appearance`, which is under test)."""
    renumbered, order = np.zeros(ids.shape, np.uint32), {}
    flat, out = ids.ravel(), renumbered.ravel()
    for value in flat[np.sort(np.unique(flat, return_index=True)[1])]:
        if value:
            order[int(value)] = len(order) + 1
    for value, new in order.items():
        out[flat == value] = new
    return renumbered


def filled_mask(labels: np.ndarray, value: int) -> np.ndarray:
    """The class mask with each z plane's enclosed background filled (scipy's 2D binary_fill_holes)."""
    mask = labels == value
    for z in range(mask.shape[0]):
        mask[z] |= ndimage.binary_fill_holes(mask[z]) & (labels[z] == 0)
    return mask


def rule_reference(labels: np.ndarray, value: int, rule: InstanceRule,
                   sampling: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The whole volume at once: `ndimage.label` of the hole-filled mask (IDs by first appearance), then the
    rule on each component in its bounding box plus one voxel (`split_component`), final IDs consecutive over
    the components in order, pieces as `split_component` numbers them. → uint32 (Z, Y, X)."""
    mask = filled_mask(labels, value) if rule.fill_holes else labels == value
    components = first_appearance(ndimage.label(mask)[0])
    out = np.zeros(labels.shape, np.uint32)
    next_id = 1
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        pieces, count = split_component(components[crop] == component, sampling, rule)
        out[crop][pieces > 0] = pieces[pieces > 0] + next_id - 1
        next_id += count
    return out


def default_reference(labels: np.ndarray, value: int, class_name: str) -> np.ndarray:
    """`rule_reference` with the class's default rule (`rule_for`), unit voxels."""
    return rule_reference(labels, value, rule_for(class_name))
