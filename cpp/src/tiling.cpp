#include "tiling.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "error.hpp"

namespace emseg_rt {
namespace {

struct AxisTile {
  int64_t origin, core_start, core_end;
};

// _axis_tiles: (origin, core start, core end) of each tile along one axis of length `size`.
std::vector<AxisTile> axis_tiles(int64_t size, int64_t tile, int64_t halo) {
  int64_t stride = tile - 2 * halo;
  int64_t count = std::max<int64_t>(1, (size + stride - 1) / stride);
  std::vector<AxisTile> tiles;
  for (int64_t k = 0; k < count - 1; ++k) tiles.push_back({k * stride - halo, k * stride, (k + 1) * stride});
  int64_t last_start = (count - 1) * stride;
  int64_t last_origin = std::max(-halo, std::min(last_start - halo, size + halo - tile));
  tiles.push_back({last_origin, last_start, size});
  return tiles;
}

}  // namespace

TilePlan plan_tiles(int64_t height, int64_t width, int64_t tile, int64_t halo) {
  if (height < 1 || width < 1)
    throw Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "cannot tile an empty plane of shape (" + std::to_string(height) +
                                                     ", " + std::to_string(width) + ")");
  if (halo < 0 || 2 * halo >= tile)
    throw Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "--halo " + std::to_string(halo) +
                                                     " must be >= 0 and less than half the model's tile (" +
                                                     std::to_string(tile) + ")");
  TilePlan plan;
  plan.height = height;
  plan.width = width;
  plan.tile = tile;
  plan.halo = halo;
  for (const auto& y : axis_tiles(height, tile, halo)) {
    for (const auto& x : axis_tiles(width, tile, halo)) {
      plan.origins.push_back({y.origin, x.origin});
      plan.cores.push_back({y.core_start, y.core_end, x.core_start, x.core_end});
    }
  }
  return plan;
}

int64_t reflect_index(int64_t index, int64_t size, bool edge) {
  if (edge || size == 1) return std::clamp<int64_t>(index, 0, size - 1);
  int64_t period = 2 * (size - 1);  // np.pad 'reflect' is the mirror image repeated with this period
  int64_t m = ((index % period) + period) % period;
  return m < size ? m : period - m;
}

std::vector<uint8_t> extract_tiles(const uint8_t* plane, const TilePlan& plan) {
  const int64_t t = plan.tile, h = plan.height, w = plan.width;
  const bool edge = std::min(h, w) <= 1;  // pad_plane: 'reflect' if min(plane.shape) > 1 else 'edge'
  std::vector<uint8_t> tiles(plan.num_tiles() * static_cast<size_t>(t * t));
  std::vector<int64_t> columns(static_cast<size_t>(t));
  for (size_t i = 0; i < plan.num_tiles(); ++i) {
    const auto [oy, ox] = plan.origins[i];
    for (int64_t c = 0; c < t; ++c) columns[static_cast<size_t>(c)] = reflect_index(ox + c, w, edge);
    uint8_t* out = tiles.data() + i * static_cast<size_t>(t * t);
    for (int64_t r = 0; r < t; ++r) {
      const uint8_t* row = plane + reflect_index(oy + r, h, edge) * w;
      for (int64_t c = 0; c < t; ++c) out[r * t + c] = row[columns[static_cast<size_t>(c)]];
    }
  }
  return tiles;
}

template <typename T>
void stitch_center(const T* tile_outputs, int64_t channels, const TilePlan& plan, T* out) {
  const int64_t t = plan.tile, h = plan.height, w = plan.width;
  for (size_t i = 0; i < plan.num_tiles(); ++i) {
    const auto [oy, ox] = plan.origins[i];
    const auto [y0, y1, x0, x1] = plan.cores[i];
    for (int64_t c = 0; c < channels; ++c) {
      const T* tile = tile_outputs + (static_cast<int64_t>(i) * channels + c) * t * t;
      for (int64_t y = y0; y < y1; ++y)
        std::copy(tile + (y - oy) * t + (x0 - ox), tile + (y - oy) * t + (x1 - ox), out + (c * h + y) * w + x0);
    }
  }
}

template void stitch_center<uint8_t>(const uint8_t*, int64_t, const TilePlan&, uint8_t*);
template void stitch_center<float>(const float*, int64_t, const TilePlan&, float*);

std::vector<float> gaussian_weights(int64_t tile, double sigma_scale) {
  const double centre = (static_cast<double>(tile) - 1.0) / 2.0;
  const double sigma = static_cast<double>(tile) * sigma_scale;
  std::vector<double> axis(static_cast<size_t>(tile));
  for (int64_t i = 0; i < tile; ++i) {
    double z = (static_cast<double>(i) - centre) / sigma;
    axis[static_cast<size_t>(i)] = std::exp(-0.5 * z * z);
  }
  double peak = 0.0;
  for (double a : axis)
    for (double b : axis) peak = std::max(peak, a * b);
  std::vector<float> weights(static_cast<size_t>(tile * tile));
  for (int64_t r = 0; r < tile; ++r)
    for (int64_t c = 0; c < tile; ++c)
      weights[static_cast<size_t>(r * tile + c)] =
          static_cast<float>(std::max(axis[static_cast<size_t>(r)] * axis[static_cast<size_t>(c)] / peak, 1e-3));
  return weights;
}

std::vector<float> blend_gaussian(const float* tile_logits, int64_t classes, const TilePlan& plan) {
  const int64_t t = plan.tile, h = plan.height, w = plan.width;
  int64_t min_y = 0, min_x = 0, max_y = 0, max_x = 0;
  for (const auto& [oy, ox] : plan.origins) {
    min_y = std::min(min_y, oy);
    min_x = std::min(min_x, ox);
    max_y = std::max(max_y, oy);
    max_x = std::max(max_x, ox);
  }
  const int64_t top = -min_y, left = -min_x;
  const int64_t ph = h + top + std::max<int64_t>(max_y + t - h, 0), pw = w + left + std::max<int64_t>(max_x + t - w, 0);
  std::vector<float> acc(static_cast<size_t>(classes * ph * pw), 0.0f), norm(static_cast<size_t>(ph * pw), 0.0f);
  const std::vector<float> weights = gaussian_weights(t);
  for (size_t i = 0; i < plan.num_tiles(); ++i) {
    const int64_t y = plan.origins[i][0] + top, x = plan.origins[i][1] + left;
    for (int64_t k = 0; k < classes; ++k) {
      const float* tile = tile_logits + (static_cast<int64_t>(i) * classes + k) * t * t;
      for (int64_t r = 0; r < t; ++r) {
        float* row = acc.data() + (k * ph + y + r) * pw + x;
        for (int64_t c = 0; c < t; ++c) {
          const float product = tile[r * t + c] * weights[static_cast<size_t>(r * t + c)];
          row[c] += product;
        }
      }
    }
    for (int64_t r = 0; r < t; ++r)
      for (int64_t c = 0; c < t; ++c) norm[static_cast<size_t>((y + r) * pw + x + c)] += weights[static_cast<size_t>(r * t + c)];
  }
  std::vector<float> out(static_cast<size_t>(classes * h * w));
  for (int64_t k = 0; k < classes; ++k)
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) {
        const size_t at = static_cast<size_t>((r + top) * pw + c + left);
        out[static_cast<size_t>((k * h + r) * w + c)] = acc[static_cast<size_t>(k * ph * pw) + at] / norm[at];
      }
  return out;
}

void merge_classes(const float* logits, int64_t classes, int64_t pixels, float threshold, uint8_t* labels) {
  for (int64_t p = 0; p < pixels; ++p) {
    int64_t best_class = 0;
    float best = logits[p];
    for (int64_t k = 1; k < classes && !std::isnan(best); ++k) {  // np.argmax: the first maximum, or first NaN
      const float value = logits[k * pixels + p];
      if (std::isnan(value) || value > best) {
        best = value;
        best_class = k;
      }
    }
    labels[p] = best > threshold ? static_cast<uint8_t>(best_class + 1) : 0;
  }
}

}  // namespace emseg_rt
