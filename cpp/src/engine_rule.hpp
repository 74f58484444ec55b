// Which TensorRT engine of a package may run on this GPU: the rule of emseg_rt/engines/select.py
// (`select_engine`, `check_engine_compatible`), with its messages: an engine runs only on exactly the compute
// capability it was built for ("sm86") and with exactly the TensorRT version that built it. No TensorRT
// headers needed: the TensorRT backend passes in what it finds at run time.
#pragma once

#include <string>

#include "package.hpp"

namespace emseg_rt {

// trt_versions_compatible: exactly equal version strings.
bool trt_versions_compatible(const std::string& built, const std::string& installed);

// The engine of `component` for GPU `target` run by `flavour` ("tensorrt" or "tensorrt-rtx") version
// `installed`; Error(EMSEG_RT_ERROR_BACKEND) naming the `emseg-rt build` command to run otherwise.
const EngineRecord& select_engine(const ModelPackage& package, const std::string& target, const std::string& flavour,
                                  const std::string& installed, const std::string& component = "full");

}  // namespace emseg_rt
