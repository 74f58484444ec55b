// Backend choice: "auto" takes the first compiled backend that can run the package on the device
// (TensorRT engines on a GPU, then the AOTInductor package), and says why it skipped the others.
#include <string>

#include "backend.hpp"
#include "error.hpp"

namespace emseg_rt {
namespace {

using Opener = std::unique_ptr<Backend> (*)(const ModelPackage&, const BackendOptions&);

struct Choice {
  const char* name;
  Opener open;
};

// The compiled backends, in the order `auto` tries them.
const Choice CHOICES[] = {
#ifdef EMSEG_RT_WITH_TENSORRT
    {"tensorrt", &open_tensorrt_backend},
#endif
#ifdef EMSEG_RT_WITH_AOTI
    {"aoti", &open_aoti_backend},
#endif
    {nullptr, nullptr},
};

}  // namespace

const char* compiled_backends() {
  static const std::string names = [] {
    std::string out;
    for (const Choice* c = CHOICES; c->name; ++c) out += (out.empty() ? "" : ",") + std::string(c->name);
    return out;
  }();
  return names.c_str();
}

void check_backend_choice(const std::string& choice, const BackendOptions& options) {
  if (choice != "auto" && choice != "aoti" && choice != "tensorrt")
    throw Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "backend " + choice + " is not one of auto, aoti, tensorrt");
  if (options.device != "cpu" && options.device != "cuda" && options.device.rfind("cuda:", 0) != 0)
    throw Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "device " + options.device + " must be cpu, cuda or cuda:N");
}

std::unique_ptr<Backend> open_backend(const ModelPackage& package, const std::string& choice,
                                      const BackendOptions& options) {
  check_backend_choice(choice, options);
  std::string skipped;
  for (const Choice* c = CHOICES; c->name; ++c) {
    if (choice != "auto" && choice != c->name) continue;
    if (choice == "auto" && std::string(c->name) == "tensorrt" && options.device == "cpu") continue;
    try {
      return c->open(package, options);
    } catch (const Error& error) {
      if (choice != "auto") throw;
      skipped += std::string(skipped.empty() ? "" : "; ") + c->name + ": " + error.what();
    }
  }
  if (choice != "auto")
    throw Error(EMSEG_RT_ERROR_BACKEND, "backend " + choice + " is not compiled into this library (it has: " +
                                            (*compiled_backends() ? compiled_backends() : "none") + ")");
  throw Error(EMSEG_RT_ERROR_BACKEND, "no backend of this library (" +
                                          std::string(*compiled_backends() ? compiled_backends() : "none") +
                                          ") can run " + package.root + " on " + options.device +
                                          (skipped.empty() ? "" : ": " + skipped));
}

}  // namespace emseg_rt
