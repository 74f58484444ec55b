// Which AOTInductor package of a model package may run here: the rule of emseg_rt/export/aoti.py
// (`select_aoti`), with its messages: the .pt2 must be compiled for this device kind and with exactly the
// torch version of the libtorch that runs it.
#pragma once

#include <string>

#include "package.hpp"

namespace emseg_rt {

// The record of `component`'s .pt2 for `device` ("cpu", "cuda", "cuda:N") and `torch_version` (torch's
// __version__ string, e.g. "2.15.0+cu132"), or Error(EMSEG_RT_ERROR_BACKEND) saying what to re-export.
AotiRecord select_aoti(const ModelPackage& package, const std::string& device,
                              const std::string& torch_version, const std::string& component = "full");

}  // namespace emseg_rt
