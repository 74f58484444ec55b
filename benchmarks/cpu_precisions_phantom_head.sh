#!/usr/bin/env bash
# Label agreement of the CPU precisions on a ViT-B model whose class decisions are trained (issue 30).
#
# With random weights, scsam-vit-b's class logits are nearly tied, so the raw label agreement of bf16 or
# int8 with fp32 measures the weights more than the precision. No trained ViT-B weights can be downloaded
# here. This trains the light part on phantoms instead, with `emseg-rt train`: the head (FAFM, class
# prompts, decoder) on top of the model's own seeded-random SAM and MAE encoders, whose embeddings it
# caches. Then `benchmarks/cpu_precisions.py --weights` runs every CPU path and its fp32 reference with that
# head. The encoders stay random, so this measures how a precision moves trained decisions, not accuracy.
#
#     benchmarks/cpu_precisions_phantom_head.sh [WORKDIR [OUT]]
#
# The measured run took about 1 min of phantom, 3 min of embedding cache, 8 min of training and 15 min of
# bench on a 2-core Intel Xeon with AMX.
set -euo pipefail
work=${1:-$(mktemp -d)}
out=${2:-benchmarks/results/cpu-intel-xeon-amx-precisions-scsam-vit-b-phantom-head}
emseg-rt phantom "$work/ph.zarr" --shape 12,1024,1024 --seed 1300
emseg-rt train scsam-vit-b --data "$work/ph.zarr" --out "$work/head.pt" --steps 120 --batch 4 \
    --checkpoint-every 40 --device cpu
python benchmarks/cpu_precisions.py --sizes vit-b --models scsam --backends auto --weights "$work/head.pt" \
    --out "$out"
