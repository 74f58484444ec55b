"""Names the whole project shares, defined once (imported by models, data, metrics, io users and the CLI)."""

DEFAULT_CLASSES = ("nucleus", "mitochondria", "granules")  # labels 1, 2, 3 (ScSAM §4.1, BetaSeg); 0 = background
DEFAULT_LABEL_NAME = "organelles"  # the label image name (IN/labels/<this> with --into-input) unless --label-name
GROUND_TRUTH = "ground_truth"  # the label group a written phantom keeps its ground truth in
