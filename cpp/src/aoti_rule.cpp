#include "aoti_rule.hpp"

#include "error.hpp"
#include "pyfs.hpp"

namespace emseg_rt {

namespace {

AotiRecord read_record(const ModelPackage& package, const std::string& component) {
  try {
    const json::Value& raw = py::subscript(py::subscript(package.manifest, "aoti"), component);
    AotiRecord record;
    record.component = component;
    record.file = json::str(py::subscript(raw, "file"));
    record.device = json::str(py::subscript(raw, "device"));
    record.torch = json::str(py::subscript(raw, "torch"));
    record.batch_max = json::to_int(py::subscript(raw, "batch_max"));
    for (const auto& item : py::iterate(py::subscript(raw, "outputs")))
      record.outputs.push_back(json::str(py::subscript(item, "name")));
    return record;
  } catch (const json::PyError& error) {
    throw Error(EMSEG_RT_ERROR_PACKAGE, "package " + package.root + ": malformed manifest.json (" + error.type + ": " +
                                            error.what() + ")");
  }
}

}  // namespace

AotiRecord select_aoti(const ModelPackage& package, const std::string& device, const std::string& torch_version,
                       const std::string& component) {
  if (package.aoti_files.count(component) == 0)
    throw Error(EMSEG_RT_ERROR_BACKEND, "package " + package.root + ": no AOTInductor package for " + component +
                                            "; re-export it with `emseg-rt export " + package.name +
                                            " --out <dir> --aoti`");
  const AotiRecord record = read_record(package, component);
  const std::string kind = device.rfind("cuda", 0) == 0 ? "cuda" : "cpu";
  if (record.device != kind)
    throw Error(EMSEG_RT_ERROR_BACKEND, record.file + " was compiled by AOTInductor for " + record.device +
                                            ", not " + kind + "; re-export it with `emseg-rt export " + package.name +
                                            " --out <dir> --aoti --aoti-device " + kind + "`");
  if (record.torch != torch_version)
    throw Error(EMSEG_RT_ERROR_BACKEND, record.file + " was compiled with torch " + record.torch +
                                            ", this runtime has torch " + torch_version +
                                            "; AOTInductor packages do not load across torch versions; re-export it "
                                            "with `emseg-rt export " + package.name + " --out <dir> --aoti`");
  return record;
}

}  // namespace emseg_rt
