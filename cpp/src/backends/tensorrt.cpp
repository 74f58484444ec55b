// TensorRT backend: the package's engine for this GPU (engines/full.<target>.engine), chosen by the shared
// compatibility rule (engine_rule.hpp: exact target, exact TensorRT version). Compiled only when CMake finds
// the TensorRT headers (EMSEG_RT_WITH_TENSORRT); not built or run on machines without them.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <sstream>

#include "../backend.hpp"
#include "../engine_rule.hpp"
#include "../error.hpp"

#ifndef EMSEG_RT_TENSORRT_VERSION
#error "EMSEG_RT_TENSORRT_VERSION (the version string Python's module reports, e.g. 10.13.3.9) must be defined"
#endif
#ifndef EMSEG_RT_TENSORRT_FLAVOUR
#define EMSEG_RT_TENSORRT_FLAVOUR "tensorrt"
#endif

namespace emseg_rt {
namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(EMSEG_RT_ERROR_BACKEND, std::string("CUDA: ") + what + ": " + cudaGetErrorString(status));
}

class Logger final : public nvinfer1::ILogger {
 public:
  std::string last_error;
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR) last_error = message;
  }
};

int device_index(const std::string& device) {
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) == 0) return std::stoi(device.substr(5));
  throw Error(EMSEG_RT_ERROR_BACKEND, "the tensorrt backend runs on a GPU; pass the device cuda");
}

std::string gpu_target(int index) {
  cudaDeviceProp properties{};
  check_cuda(cudaGetDeviceProperties(&properties, index), "no usable CUDA GPU");
  return "sm" + std::to_string(properties.major) + std::to_string(properties.minor);
}

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(const ModelPackage& package, const EngineRecord& record, int index)
      : tile_(package.tile), classes_(static_cast<int64_t>(package.classes.size())), batch_max_(record.batch_max) {
    check_cuda(cudaSetDevice(index), "cudaSetDevice");
    std::ifstream in(package.path(record.file), std::ios::binary);
    std::stringstream blob;
    blob << in.rdbuf();
    const std::string data = blob.str();
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (runtime_) engine_.reset(runtime_->deserializeCudaEngine(data.data(), data.size()));
    if (engine_) context_.reset(engine_->createExecutionContext());
    if (!context_)
      throw Error(EMSEG_RT_ERROR_BACKEND, record.file + ": TensorRT cannot deserialise it (" + logger_.last_error + ")");
    const size_t tile_pixels = static_cast<size_t>(tile_ * tile_), batch = static_cast<size_t>(batch_max_);
    check_cuda(cudaMalloc(&tiles_, batch * tile_pixels), "cudaMalloc");
    check_cuda(cudaMalloc(&logits_, batch * static_cast<size_t>(classes_) * tile_pixels * sizeof(float)), "cudaMalloc");
    check_cuda(cudaMalloc(&labels_, batch * tile_pixels), "cudaMalloc");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRTBackend() override {
    cudaFree(tiles_);
    cudaFree(logits_);
    cudaFree(labels_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "tensorrt"; }
  int64_t batch_max() const override { return batch_max_; }

  void run(const uint8_t* tiles, int64_t batch, float* logits, uint8_t* labels) override {
    const size_t pixels = static_cast<size_t>(batch * tile_ * tile_);
    check_cuda(cudaMemcpyAsync(tiles_, tiles, pixels, cudaMemcpyHostToDevice, stream_), "copy tiles");
    nvinfer1::Dims4 shape(batch, 1, tile_, tile_);
    if (!context_->setInputShape("tiles", shape) || !context_->setTensorAddress("tiles", tiles_) ||
        !context_->setTensorAddress("logits", logits_) || !context_->setTensorAddress("labels", labels_) ||
        !context_->enqueueV3(stream_))
      throw Error(EMSEG_RT_ERROR_BACKEND, "TensorRT run failed: " + logger_.last_error);
    if (logits != nullptr)
      check_cuda(cudaMemcpyAsync(logits, logits_, pixels * static_cast<size_t>(classes_) * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_), "copy logits");
    if (labels != nullptr) check_cuda(cudaMemcpyAsync(labels, labels_, pixels, cudaMemcpyDeviceToHost, stream_), "copy labels");
    check_cuda(cudaStreamSynchronize(stream_), "synchronise");
  }

 private:
  template <typename T>
  struct Deleter {
    void operator()(T* pointer) const { delete pointer; }
  };
  Logger logger_;
  int64_t tile_, classes_, batch_max_;
  std::unique_ptr<nvinfer1::IRuntime, Deleter<nvinfer1::IRuntime>> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine, Deleter<nvinfer1::ICudaEngine>> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext, Deleter<nvinfer1::IExecutionContext>> context_;
  void* tiles_ = nullptr;
  void* logits_ = nullptr;
  void* labels_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt_backend(const ModelPackage& package, const BackendOptions& options) {
  const int index = device_index(options.device);
  const EngineRecord& record =
      select_engine(package, gpu_target(index), EMSEG_RT_TENSORRT_FLAVOUR, EMSEG_RT_TENSORRT_VERSION);
  return std::make_unique<TensorRTBackend>(package, record, index);
}

}  // namespace emseg_rt
