"""Names the whole project shares, defined once (imported by models, data, metrics, io users and the CLI)."""

import numpy as np

DEFAULT_CLASSES = ("nucleus", "mitochondria", "granules")  # labels 1, 2, 3 (ScSAM §4.1, BetaSeg); 0 = background
DEFAULT_LABEL_NAME = "organelles"  # the label image name (IN/labels/<this> with --into-input) unless --label-name
GROUND_TRUTH = "ground_truth"  # the label group a written phantom keeps its ground truth in
# The model families (models/registry.py describes each; a package's manifest names one) and those whose
# whole-slice graph takes point prompts (inputs point_coords, point_labels besides the tiles).
MODEL_FAMILIES = ("vanilla-sam", "sam-star", "mae-star", "surgicalsam", "scsam", "maester", "his4mae",
                  "vanilla-sam2", "prompt-das", "samda")
POINT_PROMPTED_FAMILIES = ("vanilla-sam", "vanilla-sam2", "prompt-das")
# `emseg-rt bench`: the rows of ScSAM's Table 5 (model families) and the backends it times, named here so that the
# command's options list them without loading the benchmark (bench/table5.py, bench/runners.py use these).
TABLE5_ROWS = ("vanilla-sam", "vanilla-sam2", "surgicalsam", "mae-star", "sam-star", "scsam")
BENCH_BACKENDS = ("torch-eager-fp32", "torch-fp32", "torch-bf16", "torch-fp16", "onnxruntime", "onnxruntime-fp16",
                  "onnxruntime-int8", "onnxruntime-fp32-fused",
                  "tensorrt")


def label_dtype(num_classes: int) -> np.dtype:
    """The dtype of a label image of `num_classes` classes (0 = background): uint8 up to 255, uint16 above."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)
