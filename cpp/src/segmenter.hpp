// Segmenting one plane: the compute step of emseg_rt/runtime/slab.py (`segment_slab` for one plane) with the
// same batching rule (full batches; the last one padded with copies of its last tile) and the same
// stitching: centre crop of the graph's labels, or Gaussian blending of the logits then the class merge.
#pragma once

#include <cstdint>

#include "backend.hpp"
#include "tiling.hpp"

namespace emseg_rt {

struct PlaneOptions {
  int64_t halo = -1;  // -1: tile / 8 (any other negative halo is refused by plan_tiles)
  int64_t batch = 4;
  bool gaussian = false;
};

// plane (H, W) uint8 → labels (H, W) uint8.
void segment_plane(Backend& backend, int64_t tile, int64_t classes, float threshold, const uint8_t* plane,
                   int64_t height, int64_t width, const PlaneOptions& options, uint8_t* labels);

}  // namespace emseg_rt
