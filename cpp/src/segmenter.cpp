#include "segmenter.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "error.hpp"

namespace emseg_rt {

void segment_plane(Backend& backend, int64_t tile, int64_t classes, float threshold, const uint8_t* plane,
                   int64_t height, int64_t width, const PlaneOptions& options, uint8_t* labels) {
  const int64_t halo = options.halo == -1 ? tile / 8 : options.halo;
  if (options.batch < 1 || options.batch > backend.batch_max())
    throw Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "batch " + std::to_string(options.batch) + " must be between 1 and " +
                                                     std::to_string(backend.batch_max()) + " (the package's batch_max)");
  const TilePlan plan = plan_tiles(height, width, tile, halo);
  const std::vector<uint8_t> tiles = extract_tiles(plane, plan);
  const int64_t count = static_cast<int64_t>(plan.num_tiles()), pixels = tile * tile, batch = options.batch;
  std::vector<uint8_t> tile_labels(options.gaussian ? 0 : static_cast<size_t>(count * pixels));
  std::vector<float> tile_logits(options.gaussian ? static_cast<size_t>(count * classes * pixels) : 0);
  std::vector<uint8_t> chunk(static_cast<size_t>(batch * pixels));
  std::vector<float> chunk_logits(options.gaussian ? static_cast<size_t>(batch * classes * pixels) : 0);
  std::vector<uint8_t> chunk_labels(options.gaussian ? 0 : static_cast<size_t>(batch * pixels));
  for (int64_t start = 0; start < count; start += batch) {
    const int64_t real = std::min(batch, count - start);
    for (int64_t i = 0; i < batch; ++i) {  // padding repeats the last real tile (slab.tile_batches)
      const int64_t source = start + std::min(i, real - 1);
      std::memcpy(chunk.data() + i * pixels, tiles.data() + source * pixels, static_cast<size_t>(pixels));
    }
    if (options.gaussian) {
      backend.run(chunk.data(), batch, chunk_logits.data(), nullptr);
      std::copy_n(chunk_logits.data(), real * classes * pixels, tile_logits.data() + start * classes * pixels);
    } else {
      backend.run(chunk.data(), batch, nullptr, chunk_labels.data());
      std::copy_n(chunk_labels.data(), real * pixels, tile_labels.data() + start * pixels);
    }
  }
  if (!options.gaussian) {
    stitch_center(tile_labels.data(), 1, plan, labels);
    return;
  }
  const std::vector<float> logits = blend_gaussian(tile_logits.data(), classes, plan);
  merge_classes(logits.data(), classes, height * width, threshold, labels);
}

}  // namespace emseg_rt
