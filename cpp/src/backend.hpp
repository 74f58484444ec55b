// The one internal backend interface (as emseg_rt/runtime/backends/base.py on the Python side): a loaded
// per-slice graph that maps uint8 tiles to class logits and labels. Nothing outside src/backends/ and
// backends.cpp knows which backend it talks to.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "package.hpp"

namespace emseg_rt {

struct BackendOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  int threads = 0;             // CPU threads; 0: the backend's default
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // The largest batch run() accepts.
  virtual int64_t batch_max() const = 0;
  // tiles (B, 1, T, T) uint8 → logits (B, K, T, T) float32 and labels (B, T, T) uint8; either output may be
  // null (not copied out). Throws Error.
  virtual void run(const uint8_t* tiles, int64_t batch, float* logits, uint8_t* labels) = 0;
};

// Error(EMSEG_RT_ERROR_INVALID_ARGUMENT) for an unknown backend or device name (checked before any loading).
void check_backend_choice(const std::string& choice, const BackendOptions& options);
// The backend `choice` ("auto", "aoti", "tensorrt") for `package`; Error naming what to do when none fits.
std::unique_ptr<Backend> open_backend(const ModelPackage& package, const std::string& choice,
                                      const BackendOptions& options);
// The backends compiled in, comma-separated.
const char* compiled_backends();

// Per backend, defined in src/backends/<name>.cpp when that backend is compiled in.
std::unique_ptr<Backend> open_aoti_backend(const ModelPackage& package, const BackendOptions& options);
std::unique_ptr<Backend> open_tensorrt_backend(const ModelPackage& package, const BackendOptions& options);

}  // namespace emseg_rt
