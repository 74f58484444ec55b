// Tiling, blending and stitching of 2D planes: a port of emseg_rt/runtime/tiling.py, pure functions of
// arrays and parameters, giving the same tiles, cores, weights and labels (see that module's docstring).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace emseg_rt {

struct TilePlan {
  int64_t height = 0, width = 0;  // the plane (H, W)
  int64_t tile = 0, halo = 0;     // T and the context pixels per side
  std::vector<std::array<int64_t, 2>> origins;  // (N, 2) top-left of each tile (may be negative), row-major
  std::vector<std::array<int64_t, 4>> cores;    // (N, 4) y0, y1, x0, x1 (half-open), partitioning the plane

  int64_t stride() const { return tile - 2 * halo; }
  size_t num_tiles() const { return origins.size(); }
};

// plan_tiles((H, W), T, halo); Error(EMSEG_RT_ERROR_INVALID_ARGUMENT) with Python's message for an empty
// plane or a halo that leaves no core.
TilePlan plan_tiles(int64_t height, int64_t width, int64_t tile, int64_t halo);

// The plane index a padded coordinate reads (np.pad 'reflect', or 'edge' when the plane has a side of 1).
int64_t reflect_index(int64_t index, int64_t size, bool edge);

// extract_tiles: plane (H, W) uint8 → tiles (N, T, T) uint8 in plan order, edges reflect-padded.
std::vector<uint8_t> extract_tiles(const uint8_t* plane, const TilePlan& plan);

// stitch_center: tile outputs (N, C, T, T) → (C, H, W), every pixel from the tile whose core holds it.
template <typename T>
void stitch_center(const T* tile_outputs, int64_t channels, const TilePlan& plan, T* out);

// gaussian_weights(T, 0.125): (T, T) float32 importance map, computed in double then rounded as numpy does.
std::vector<float> gaussian_weights(int64_t tile, double sigma_scale = 0.125);

// blend_gaussian: tile logits (N, K, T, T) float32 → (K, H, W) float32, accumulated in float32 in tile order.
std::vector<float> blend_gaussian(const float* tile_logits, int64_t classes, const TilePlan& plan);

// merge_classes: logits (K, H, W) → labels (H, W): k+1 for the largest logit (first on ties), 0 where it
// does not exceed `threshold`.
void merge_classes(const float* logits, int64_t classes, int64_t pixels, float threshold, uint8_t* labels);

}  // namespace emseg_rt
