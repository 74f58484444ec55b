#include "engine_rule.hpp"

#include "error.hpp"

namespace emseg_rt {
namespace {

std::string build_command(const std::string& root, const std::string& target, const std::string& flavour) {
  return "run `emseg-rt build " + root + " --target " + target +
         (flavour.empty() ? "" : " --engine-backend " + flavour) + "`";
}

[[noreturn]] void refuse(const std::string& message) { throw Error(EMSEG_RT_ERROR_BACKEND, message); }

}  // namespace

bool trt_versions_compatible(const std::string& built, const std::string& installed) { return built == installed; }

const EngineRecord& select_engine(const ModelPackage& package, const std::string& target, const std::string& flavour,
                                  const std::string& installed, const std::string& component) {
  static const std::map<std::string, EngineRecord> none;
  auto per_component = package.engines.find(component);
  const auto& engines = per_component == package.engines.end() ? none : per_component->second;
  std::string have;
  for (const auto& [name, record] : engines) have += (have.empty() ? "" : ", ") + name;
  if (have.empty()) have = "none";
  auto found = engines.find(target);
  if (found == engines.end())
    refuse(package.root + " has no " + component + " engine for this GPU (" + target + "; engines for: " + have +
           "); " + build_command(package.root, target, flavour));
  const EngineRecord& record = found->second;
  if (record.flavour != flavour)
    refuse(record.file + " needs " + record.flavour + " " + record.trt_version + ", which is not installed here; "
           "or rebuild it with the TensorRT you have: " + build_command(package.root, target, flavour));
  // check_engine_compatible
  const std::string rebuild = build_command(package.root, target, record.flavour);
  if (record.target != target)
    refuse(record.file + " was built for " + record.target + ", this GPU is " + target + "; " + rebuild);
  if (!trt_versions_compatible(record.trt_version, installed))
    refuse(record.file + " was built with " + record.flavour + " " + record.trt_version + ", installed is " +
           installed + "; engines do not load across versions; " + rebuild);
  return record;
}

}  // namespace emseg_rt
