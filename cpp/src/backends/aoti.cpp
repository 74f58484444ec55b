// AOTInductor backend: the package's .pt2 (written by `emseg-rt export --aoti`) run through libtorch's
// AOTIModelPackageLoader. The only translation unit compiled against the torch headers.
#include <ATen/ops/from_blob.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cstring>

#include "../aoti_rule.hpp"
#include "../backend.hpp"
#include "../error.hpp"

#ifndef EMSEG_RT_TORCH_VERSION
#error "EMSEG_RT_TORCH_VERSION (torch.__version__ of the libtorch linked) must be defined by the build"
#endif

namespace emseg_rt {
namespace {

c10::Device parse_device(const std::string& device) {
  if (device == "cpu") return c10::Device(c10::kCPU);
  if (device == "cuda") return c10::Device(c10::kCUDA, 0);
  return c10::Device(device);  // "cuda:N"
}

class AotiBackend final : public Backend {
 public:
  AotiBackend(const ModelPackage& package, const AotiRecord& record, const BackendOptions& options)
      : device_(parse_device(options.device)), batch_max_(record.batch_max), tile_(package.tile),
        classes_(static_cast<int64_t>(package.classes.size())) {
    auto found = [&](const char* name) {
      return static_cast<int64_t>(std::find(record.outputs.begin(), record.outputs.end(), name) - record.outputs.begin());
    };
    logits_index_ = found("logits");
    labels_index_ = found("labels");
    if (logits_index_ >= static_cast<int64_t>(record.outputs.size()) ||
        labels_index_ >= static_cast<int64_t>(record.outputs.size()))
      throw Error(EMSEG_RT_ERROR_PACKAGE, "package " + package.root + ": " + record.file +
                                              " does not list the outputs 'logits' and 'labels' in the manifest");
    if (options.threads > 0) at::set_num_threads(options.threads);
    const c10::DeviceIndex index = device_.is_cuda() ? device_.index() : static_cast<c10::DeviceIndex>(-1);
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package.path(record.file), "model",
                                                                        /*run_single_threaded=*/false, 1, index);
  }

  const char* name() const override { return "aoti"; }
  int64_t batch_max() const override { return batch_max_; }

  void run(const uint8_t* tiles, int64_t batch, float* logits, uint8_t* labels) override {
    try {
      run_torch(tiles, batch, logits, labels);
    } catch (const c10::Error& error) {
      std::string what = error.what_without_backtrace();
      throw Error(EMSEG_RT_ERROR_BACKEND, "AOTInductor run failed: " + what.substr(0, what.find('\n')));
    }
  }

 private:
  void run_torch(const uint8_t* tiles, int64_t batch, float* logits, uint8_t* labels) {
    at::Tensor input = at::from_blob(const_cast<uint8_t*>(tiles), {batch, 1, tile_, tile_}, at::kByte);
    std::vector<at::Tensor> inputs{device_.is_cpu() ? input : input.to(device_)};
    std::vector<at::Tensor> outputs = loader_->run(inputs);
    if (logits != nullptr) copy_out(outputs.at(logits_index_).to(at::kCPU, at::kFloat), logits, batch * classes_);
    if (labels != nullptr) copy_out(outputs.at(labels_index_).to(at::kCPU, at::kByte), labels, batch);
  }

  c10::Device device_;
  int64_t batch_max_, tile_, classes_;
  int64_t logits_index_ = 0, labels_index_ = 1;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;

  template <typename T>
  void copy_out(const at::Tensor& tensor, T* out, int64_t planes) const {
    at::Tensor dense = tensor.contiguous();
    const int64_t expected = planes * tile_ * tile_;
    if (dense.numel() != expected)
      throw Error(EMSEG_RT_ERROR_BACKEND, "the AOTInductor package returned " + std::to_string(dense.numel()) +
                                              " values where " + std::to_string(expected) + " were expected");
    std::memcpy(out, dense.data_ptr(), static_cast<size_t>(expected) * sizeof(T));
  }
};

}  // namespace

std::unique_ptr<Backend> open_aoti_backend(const ModelPackage& package, const BackendOptions& options) {
  const AotiRecord record = select_aoti(package, options.device, EMSEG_RT_TORCH_VERSION);
  try {
    return std::make_unique<AotiBackend>(package, record, options);
  } catch (const c10::Error& error) {
    std::string what = error.what_without_backtrace();
    throw Error(EMSEG_RT_ERROR_BACKEND, package.root + "/" + record.file + ": libtorch cannot load it (" +
                                            what.substr(0, what.find('\n')) + ")");
  }
}

}  // namespace emseg_rt
