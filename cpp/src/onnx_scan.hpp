// The external-data locations an ONNX file refers to, read from its protobuf without a protobuf library
// (port of emseg_rt.package.external_data_locations: initialisers, sparse initialisers, node attributes,
// subgraphs and functions). The C++ runtime never runs the ONNX graphs; it checks them so that it refuses
// exactly the packages Python refuses.
#pragma once

#include <string>
#include <vector>

namespace emseg_rt {

// Sorted, unique locations; [] when the file never mentions "location" (not parsed then, as in Python).
// Error(EMSEG_RT_ERROR_PACKAGE) "<path>: not a readable ONNX graph (...)" for bytes that are not protobuf.
std::vector<std::string> external_data_locations(const std::string& onnx_path);

}  // namespace emseg_rt
