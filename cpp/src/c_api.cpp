// The C ABI (include/emseg_rt.h) over the C++ library: every entry point catches everything, stores the
// message in the calling thread's last-error slot and returns a status. No exception crosses it.
#include <cstring>
#include <new>
#include <string>

#include "backend.hpp"
#include "emseg_rt.h"
#include "error.hpp"
#include "package.hpp"
#include "segmenter.hpp"

#ifndef EMSEG_RT_VERSION_STRING
#define EMSEG_RT_VERSION_STRING "0.0.0"
#endif

struct emseg_rt_model {
  emseg_rt::ModelPackage package;
  std::unique_ptr<emseg_rt::Backend> backend;
};

namespace {

thread_local std::string last_error;

template <typename Body>
emseg_rt_status guarded(Body&& body) {
  try {
    body();
    last_error.clear();
    return EMSEG_RT_OK;
  } catch (const emseg_rt::Error& error) {
    last_error = error.what();
    return error.status;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return EMSEG_RT_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& error) {
    last_error = std::string("internal error: ") + error.what();
    return EMSEG_RT_ERROR_INTERNAL;
  } catch (...) {
    last_error = "internal error: unknown exception";
    return EMSEG_RT_ERROR_INTERNAL;
  }
}

void require(bool condition, const char* message) {
  if (!condition) throw emseg_rt::Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, message);
}

// Copy the caller's struct (which may be older, hence smaller) over the defaults, up to `struct_size`.
template <typename T>
T read_options(const T* given, const T& defaults) {
  T out = defaults;
  if (given != nullptr) {
    require(given->struct_size >= sizeof(uint32_t) && given->struct_size <= sizeof(T),
            "options: struct_size is not the size of an emseg_rt options struct (call the *_options_init function)");
    std::memcpy(&out, given, given->struct_size);
  }
  return out;
}

void copy_text(char* out, size_t size, const std::string& text) {
  std::strncpy(out, text.c_str(), size - 1);
  out[size - 1] = '\0';
}

}  // namespace

extern "C" {

uint32_t emseg_rt_abi_version(void) { return EMSEG_RT_ABI_VERSION; }
const char* emseg_rt_version(void) { return EMSEG_RT_VERSION_STRING; }
const char* emseg_rt_backends(void) { return emseg_rt::compiled_backends(); }
const char* emseg_rt_last_error(void) { return last_error.c_str(); }

void emseg_rt_open_options_init(emseg_rt_open_options* options) {
  if (options == nullptr) return;
  *options = emseg_rt_open_options{sizeof(emseg_rt_open_options), "auto", "cpu", 1, 0};
}

emseg_rt_status emseg_rt_open(const char* package_dir, const emseg_rt_open_options* options, emseg_rt_model** model) {
  return guarded([&] {
    require(package_dir != nullptr && model != nullptr, "emseg_rt_open: package_dir and model must not be NULL");
    *model = nullptr;
    emseg_rt_open_options defaults;
    emseg_rt_open_options_init(&defaults);
    const emseg_rt_open_options chosen = read_options(options, defaults);
    emseg_rt::BackendOptions backend_options;
    backend_options.device = chosen.device ? chosen.device : "cpu";
    backend_options.threads = chosen.threads;
    const std::string backend = chosen.backend ? chosen.backend : "auto";
    emseg_rt::check_backend_choice(backend, backend_options);
    auto opened = std::make_unique<emseg_rt_model>();
    opened->package = emseg_rt::load_package(package_dir, chosen.verify_hashes != 0);
    if (opened->package.classes.size() > 255)
      throw emseg_rt::Error(EMSEG_RT_ERROR_PACKAGE, "package " + opened->package.root + ": " +
                                                        std::to_string(opened->package.classes.size()) +
                                                        " classes do not fit uint8 labels (at most 255)");
    opened->backend = emseg_rt::open_backend(opened->package, backend, backend_options);
    *model = opened.release();
  });
}

void emseg_rt_close(emseg_rt_model* model) { delete model; }

emseg_rt_status emseg_rt_get_input_spec(const emseg_rt_model* model, emseg_rt_input_spec* spec) {
  return guarded([&] {
    require(model != nullptr && spec != nullptr, "emseg_rt_get_input_spec: model and spec must not be NULL");
    require(spec->struct_size == sizeof(emseg_rt_input_spec),
            "emseg_rt_get_input_spec: set spec->struct_size = sizeof(emseg_rt_input_spec)");
    const auto& package = model->package;
    spec->tile = static_cast<int32_t>(package.tile);
    spec->channels = package.input.shape.size() == 4 ? std::stoi(package.input.shape[1]) : 1;
    spec->num_classes = static_cast<int32_t>(package.classes.size());
    spec->batch_max = static_cast<int32_t>(model->backend->batch_max());
    spec->default_halo = static_cast<int32_t>(package.tile / 8);
    spec->threshold = package.label_threshold;
    copy_text(spec->precision, sizeof spec->precision, package.precision);
    copy_text(spec->input_dtype, sizeof spec->input_dtype, package.input.dtype);
  });
}

const char* emseg_rt_class_name(const emseg_rt_model* model, int32_t index) {
  if (model == nullptr || index < 0 || index > static_cast<int32_t>(model->package.classes.size())) return nullptr;
  return index == 0 ? "background" : model->package.classes[static_cast<size_t>(index - 1)].c_str();
}

const char* emseg_rt_model_name(const emseg_rt_model* model) { return model ? model->package.name.c_str() : nullptr; }
const char* emseg_rt_backend_name(const emseg_rt_model* model) { return model ? model->backend->name() : nullptr; }

emseg_rt_status emseg_rt_segment_tiles(emseg_rt_model* model, const uint8_t* tiles, int32_t batch, float* logits,
                                       uint8_t* labels) {
  return guarded([&] {
    require(model != nullptr && tiles != nullptr, "emseg_rt_segment_tiles: model and tiles must not be NULL");
    if (batch < 1 || batch > model->backend->batch_max())
      throw emseg_rt::Error(EMSEG_RT_ERROR_INVALID_ARGUMENT, "emseg_rt_segment_tiles: batch " + std::to_string(batch) +
                                                                 " must be between 1 and " +
                                                                 std::to_string(model->backend->batch_max()));
    model->backend->run(tiles, batch, logits, labels);
  });
}

void emseg_rt_plane_options_init(emseg_rt_plane_options* options) {
  if (options == nullptr) return;
  *options = emseg_rt_plane_options{sizeof(emseg_rt_plane_options), -1, 4, EMSEG_RT_BLEND_CENTER};
}

emseg_rt_status emseg_rt_segment_plane(emseg_rt_model* model, const uint8_t* plane, int64_t height, int64_t width,
                                       const emseg_rt_plane_options* options, uint8_t* labels) {
  return guarded([&] {
    require(model != nullptr && plane != nullptr && labels != nullptr,
            "emseg_rt_segment_plane: model, plane and labels must not be NULL");
    emseg_rt_plane_options defaults;
    emseg_rt_plane_options_init(&defaults);
    const emseg_rt_plane_options chosen = read_options(options, defaults);
    require(chosen.blend == EMSEG_RT_BLEND_CENTER || chosen.blend == EMSEG_RT_BLEND_GAUSSIAN,
            "emseg_rt_segment_plane: blend must be EMSEG_RT_BLEND_CENTER or EMSEG_RT_BLEND_GAUSSIAN");
    emseg_rt::PlaneOptions plane_options;
    plane_options.halo = chosen.halo;
    plane_options.batch = chosen.batch;
    plane_options.gaussian = chosen.blend == EMSEG_RT_BLEND_GAUSSIAN;
    const auto& package = model->package;
    emseg_rt::segment_plane(*model->backend, package.tile, static_cast<int64_t>(package.classes.size()),
                            package.label_threshold, plane, height, width, plane_options, labels);
  });
}

}  // extern "C"
