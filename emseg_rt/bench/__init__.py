"""`emseg-rt bench`: reproduce ScSAM's per-image inference-time table (Table 5), backend by backend."""

from emseg_rt.bench.table5 import PAPER_TABLE5_SECONDS, BenchConfig, run_bench

__all__ = ["PAPER_TABLE5_SECONDS", "BenchConfig", "run_bench"]
