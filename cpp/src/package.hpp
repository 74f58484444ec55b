// The model package, read and checked exactly as emseg_rt/package.py's load_package does: the same checks in
// the same order, refusing with the same one-line messages (Error with EMSEG_RT_ERROR_PACKAGE).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "json.hpp"

namespace emseg_rt {

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<std::string> shape;  // "batch" for the dynamic dimension, decimal text otherwise
};

struct ComponentSpec {
  std::string name, role, file;
  std::vector<std::string> external_data;
  std::vector<TensorSpec> inputs, outputs;
};

// One TensorRT engine of the package (manifest "engines"/<component>/<target>).
struct EngineRecord {
  std::string component, target, file, flavour, trt_version;
  int64_t batch_max = 0;
};

// The AOTInductor package of a component (manifest "aoti"/<component>): a .pt2 compiled for `device`
// ("cpu" or "cuda") by torch `torch`; it runs only with exactly that torch version (emseg_rt/export/aoti.py).
struct AotiRecord {
  std::string component, file, device, torch;
  int64_t batch_max = 0;
  std::vector<std::string> outputs;  // output names in the order the .pt2 returns them
};

struct ModelPackage {
  std::string root;  // as Python's str(Path(root)) writes it, for messages
  json::Value manifest;
  std::string name, family, precision;
  std::vector<std::string> classes;
  int64_t tile = 0, batch_max = 0;
  TensorSpec input;
  float label_threshold = 0.0f;  // manifest parity.label_threshold (0 when absent), as the runtime reads it
  std::map<std::string, ComponentSpec> components;
  std::map<std::string, std::map<std::string, EngineRecord>> engines;
  std::map<std::string, std::string> aoti_files;  // component → its .pt2 (checked like every file)

  std::string path(const std::string& relative) const { return root + "/" + relative; }
};

// Python's str(pathlib.Path(text)): repeated and trailing slashes and '.' parts dropped.
std::string python_path(const std::string& text);

// Open and verify the package at `path` (load_package(path, verify)); Error(EMSEG_RT_ERROR_PACKAGE) if refused.
ModelPackage load_package(const std::string& path, bool verify = true);

}  // namespace emseg_rt
