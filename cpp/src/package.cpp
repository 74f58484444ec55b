// Port of emseg_rt/package.py's load_package: same checks, same order, same messages.
#include "package.hpp"

#include <dirent.h>

#include <fstream>
#include <sstream>

#include "error.hpp"
#include "onnx_scan.hpp"
#include "pyfs.hpp"
#include "sha256.hpp"

namespace emseg_rt {
namespace {

const char* MANIFEST_NAME = "manifest.json";
const char* MANIFEST_HASH_NAME = "manifest.sha256";
const char* FULL = "full";

[[noreturn]] void refuse(const std::string& message) { throw Error(EMSEG_RT_ERROR_PACKAGE, message); }

bool lower(char c) { return c >= 'a' && c <= 'z'; }
bool digit(char c) { return c >= '0' && c <= '9'; }

bool is_sha256_hex(const std::string& text) {  // [0-9a-f]{64}
  if (text.size() != 64) return false;
  for (char c : text)
    if (!digit(c) && !(c >= 'a' && c <= 'f')) return false;
  return true;
}

bool is_identifier(const std::string& text) {  // [a-z][a-z0-9_]* (package.COMPONENT_NAME)
  if (text.empty() || !lower(text[0])) return false;
  for (char c : text)
    if (!lower(c) && !digit(c) && c != '_') return false;
  return true;
}

bool is_target(const std::string& text) {  // sm[0-9]+ (package.TARGET_NAME)
  if (text.size() < 3 || text.compare(0, 2, "sm") != 0) return false;
  for (size_t i = 2; i < text.size(); ++i)
    if (!digit(text[i])) return false;
  return true;
}

// safe_member(root, relative): refuse a path that is absolute, climbs out with '..', or resolves outside.
std::string safe_member(const std::string& root, const std::string& relative) {
  bool climbs = false;
  for (const auto& part : py::posix_parts(relative)) climbs = climbs || part == "..";
  if (relative.empty() || relative[0] == '/' || climbs || relative.find('\\') != std::string::npos)
    refuse("package " + root + ": manifest names a file outside the package: " + json::repr_string(relative));
  std::string candidate = root + "/" + relative;
  if (!py::is_relative_to(py::resolve(candidate), py::resolve(root)))
    refuse("package " + root + ": " + json::repr_string(relative) + " resolves outside the package directory");
  return candidate;
}

std::string read_member_bytes(const std::string& root, const std::string& name, const std::string& missing) {
  std::string path = root + "/" + name;
  if (!py::is_file(path)) refuse(missing);
  safe_member(root, name);
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in.good() && !in.eof()) refuse("package " + root + ": cannot read " + name);
  return buffer.str();
}

// bytes.decode('utf-8'), with Python's UnicodeDecodeError message for the first bad byte.
void check_utf8(const std::string& data) {
  size_t i = 0;
  while (i < data.size()) {
    unsigned char c = static_cast<unsigned char>(data[i]);
    size_t length = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", c);
    if (length == 0)
      throw json::PyError("UnicodeDecodeError", std::string("'utf-8' codec can't decode byte ") + hex +
                                                    " in position " + std::to_string(i) + ": invalid start byte");
    for (size_t k = 1; k < length; ++k) {
      if (i + k >= data.size())
        throw json::PyError("UnicodeDecodeError", std::string("'utf-8' codec can't decode byte ") + hex +
                                                      " in position " + std::to_string(i) + ": unexpected end of data");
      if ((static_cast<unsigned char>(data[i + k]) & 0xC0) != 0x80)
        throw json::PyError("UnicodeDecodeError", std::string("'utf-8' codec can't decode byte ") + hex +
                                                      " in position " + std::to_string(i) +
                                                      ": invalid continuation byte");
    }
    i += length;
  }
}

std::vector<std::string> ascii_split(const std::string& data) {  // bytes.decode('ascii', 'replace').split()
  std::vector<std::string> fields;
  std::string current;
  for (unsigned char c : data) {
    bool space = c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    if (space) {
      if (!current.empty()) fields.push_back(current);
      current.clear();
    } else {
      current += c < 0x80 ? static_cast<char>(c) : '?';  // U+FFFD: not a hex digit either way
    }
  }
  if (!current.empty()) fields.push_back(current);
  return fields;
}

json::Value read_manifest(const std::string& root) {
  if (!py::is_dir(root)) refuse("package " + root + ": no such directory");
  std::string data = read_member_bytes(root, MANIFEST_NAME, "package " + root + ": no " + MANIFEST_NAME +
                                                                "; is this a directory written by `emseg-rt export`?");
  json::Value manifest;
  try {
    check_utf8(data);
    manifest = json::parse(data);
  } catch (const json::PyError& error) {
    refuse("package " + root + ": " + MANIFEST_NAME + " is not valid JSON (" + error.what() + ")");
  }
  const json::Value* format = manifest.find("format");
  if (!manifest.is_object() || format == nullptr || !format->is_string() || format->text != "emseg-rt-package")
    refuse("package " + root + ": " + MANIFEST_NAME + " is not an emseg-rt package manifest");
  const json::Value* version = manifest.find("format_version");
  if (version == nullptr || !json::equals_int(*version, 1))
    refuse("package " + root + ": manifest format_version " + (version ? json::repr(*version) : "None") +
           ", this emseg-rt reads 1; re-export it");
  std::string recorded = read_member_bytes(
      root, MANIFEST_HASH_NAME, "package " + root + ": no " + MANIFEST_HASH_NAME + " (the manifest's own hash; " +
                                    "packages from older emseg-rt lack it); re-export it with `emseg-rt export`");
  std::vector<std::string> fields = ascii_split(recorded);
  if (fields.empty() || !is_sha256_hex(fields[0]))
    refuse("package " + root + ": " + MANIFEST_HASH_NAME + " holds no sha256; re-export the package");
  if (sha256_bytes(data) != fields[0])
    refuse("package " + root + ": " + MANIFEST_NAME + " does not match " + MANIFEST_HASH_NAME +
           " (edited or corrupt); re-export the package (`emseg-rt export`), then `emseg-rt build` it again");
  return manifest;
}

std::string check_component_name(const std::string& root, const std::string& name) {
  if (!is_identifier(name))
    refuse("package " + root + ": component name " + json::repr_string(name) +
           " is not an identifier ([a-z][a-z0-9_]*); the manifest was not written by emseg-rt");
  return name;
}

void check_target_name(const std::string& root, const std::string& target) {
  if (!is_target(target))
    refuse("package " + root + ": engine target " + json::repr_string(target) + " is not sm<digits> (e.g. sm86)");
}

bool listed(const json::Value& files, const std::string& relative) { return files.find(relative) != nullptr; }

TensorSpec tensor_spec(const json::Value& raw) {
  TensorSpec spec;
  spec.name = json::str(py::subscript(raw, "name"));
  spec.dtype = json::str(py::subscript(raw, "dtype"));
  for (const auto& dim : py::iterate(py::subscript(raw, "shape"))) spec.shape.push_back(json::str(dim));
  return spec;
}

ComponentSpec component(const std::string& root, const std::string& name, const json::Value& raw,
                        const json::Value& files) {
  ComponentSpec spec;
  spec.name = name;
  spec.file = json::str(py::subscript(raw, "file"));
  safe_member(root, spec.file);
  const json::Value* external = py::get(raw, "external_data");
  if (external != nullptr)
    for (const auto& item : py::iterate(*external)) spec.external_data.push_back(json::str(item));
  std::vector<std::string> all{spec.file};
  all.insert(all.end(), spec.external_data.begin(), spec.external_data.end());
  for (const auto& relative : all) {
    safe_member(root, relative);
    if (!listed(files, relative))
      refuse("package " + root + ": " + relative + " (component " + name + ") has no sha256 in the manifest");
  }
  spec.role = json::str(py::subscript(raw, "role"));
  for (const auto& item : py::iterate(py::subscript(raw, "inputs"))) spec.inputs.push_back(tensor_spec(item));
  for (const auto& item : py::iterate(py::subscript(raw, "outputs"))) spec.outputs.push_back(tensor_spec(item));
  return spec;
}

void read_engines(ModelPackage& package, const json::Value& files) {
  const std::string& root = package.root;
  const json::Value* engines = py::get(package.manifest, "engines");
  if (engines == nullptr) return;
  for (const auto& [component, targets] : py::items(*engines)) {
    check_component_name(root, component);
    for (const auto& [target, raw] : py::items(targets)) {
      check_target_name(root, target);
      const json::Value* named = py::get(raw, "target");
      if (named == nullptr || !named->is_string() || named->text != target)
        refuse("package " + root + ": engine record " + component + "/" + target + " names target " +
               (named ? json::repr(*named) : "None"));
      std::string file = json::str(py::subscript(raw, "file"));
      safe_member(root, file);
      if (!listed(files, file)) refuse("package " + root + ": engine " + file + " has no sha256 in the manifest");
      EngineRecord record{component, json::str(py::subscript(raw, "target")), file,
                          json::str(py::subscript(raw, "flavour")), json::str(py::subscript(raw, "trt_version")),
                          json::to_int(py::subscript(raw, "batch_max"))};
      package.engines[component][target] = record;
    }
  }
}

// The manifest's "aoti" records: component name, file inside the package and listed (package.py, after the
// engines). The other fields are read when the AOTInductor backend is chosen (aoti_rule.cpp).
void read_aoti(ModelPackage& package, const json::Value& files) {
  const std::string& root = package.root;
  const json::Value* aoti = py::get(package.manifest, "aoti");
  if (aoti == nullptr) return;
  for (const auto& [component, raw] : py::items(*aoti)) {
    check_component_name(root, component);
    const std::string file = json::str(py::subscript(raw, "file"));
    safe_member(root, file);
    if (!listed(files, file))
      refuse("package " + root + ": AOTInductor package " + file + " has no sha256 in the manifest");
    package.aoti_files[component] = file;
  }
}

ModelPackage package_from_manifest(const std::string& root, json::Value manifest,
                                   std::vector<std::string>& order) {
  ModelPackage package;
  package.root = root;
  package.manifest = std::move(manifest);
  const json::Value& m = package.manifest;
  try {
    static const json::Value empty_object = [] { json::Value v; v.kind = json::Kind::Object; return v; }();
    const json::Value* files_found = m.find("files");
    const json::Value& files = files_found ? *files_found : empty_object;
    if (!files.is_object()) throw json::PyError("TypeError", "files is not an object");
    for (const auto& [name, raw] : py::items(py::subscript(m, "components"))) {
      check_component_name(root, name);
      package.components[name] = component(root, name, raw, files);
      order.push_back(name);
    }
    if (package.components.count(FULL) == 0)
      refuse("package " + root + ": manifest has no '" + FULL + "' component");
    read_engines(package, files);
    read_aoti(package, files);
    package.name = json::str(py::subscript(m, "name"));
    package.family = json::str(py::subscript(m, "family"));
    for (const auto& item : py::iterate(py::subscript(m, "classes"))) package.classes.push_back(json::str(item));
    package.tile = json::to_int(py::subscript(m, "tile"));
    package.precision = json::str(py::subscript(m, "precision"));
    package.batch_max = json::to_int(py::subscript(m, "batch_max"));
    package.input = tensor_spec(py::subscript(m, "input"));
    const json::Value* parity = m.find("parity");
    const json::Value* threshold = parity && parity->is_object() ? parity->find("label_threshold") : nullptr;
    package.label_threshold = threshold && threshold->is_number() ? static_cast<float>(threshold->number) : 0.0f;
  } catch (const json::PyError& error) {
    refuse("package " + root + ": malformed " + MANIFEST_NAME + " (" + error.type + ": " + error.what() + ")");
  }
  return package;
}

// os.walk(root) top-down: each directory's entries (subdirectories, then files), then its subdirectories.
void check_symlinks(const std::string& root, const std::string& base, const std::string& directory,
                    const std::string& relative) {
  DIR* handle = opendir(directory.c_str());
  if (handle == nullptr) return;
  std::vector<std::string> dirs, files;
  while (dirent* entry = readdir(handle)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    (py::is_dir(directory + "/" + name) ? dirs : files).push_back(name);
  }
  closedir(handle);
  std::vector<std::string> all(dirs);
  all.insert(all.end(), files.begin(), files.end());
  for (const auto& name : all) {
    std::string entry = directory + "/" + name;
    if (py::is_symlink(entry) && !py::is_relative_to(py::resolve(entry), base))
      refuse("package " + root + ": " + relative + name + " is a symlink to a place outside the package directory");
  }
  for (const auto& name : dirs)
    if (!py::is_symlink(directory + "/" + name))
      check_symlinks(root, base, directory + "/" + name, relative + name + "/");
}

void verify_files(const std::string& root, const json::Value& manifest, bool hashes) {
  const json::Value* files = manifest.find("files");
  if (files == nullptr || !files->is_object() || files->members.empty())
    refuse("package " + root + ": manifest lists no files");
  for (const auto& [relative, expected] : files->members) {
    std::string path = safe_member(root, relative);
    if (!py::is_file(path)) refuse("package " + root + ": " + relative + " is missing");
    if (hashes && (!expected.is_string() || sha256_file(path) != expected.text))
      refuse("package " + root + ": " + relative + " does not match its sha256 in the manifest (modified or corrupt)");
  }
}

std::string posix_parent(const std::string& file) {
  std::vector<std::string> parts = py::posix_parts(file);
  std::string out;
  for (size_t i = 0; i + 1 < parts.size(); ++i) out += parts[i] + "/";
  return out;
}

void check_external_data(const std::string& root, const ComponentSpec& spec, const json::Value& files) {
  std::vector<std::string> locations = external_data_locations(root + "/" + spec.file);
  for (const auto& location : locations) {
    bool climbs = false;
    for (const auto& part : py::posix_parts(location)) climbs = climbs || part == "..";
    if (location.empty() || location[0] == '/' || climbs || location.find('\\') != std::string::npos)
      refuse("package " + root + ": " + spec.file + " reads external data from " + json::repr_string(location) +
             ", outside the package directory");
    std::string relative = py::path_str(posix_parent(spec.file) + location);
    safe_member(root, relative);
    if (!listed(files, relative))
      refuse("package " + root + ": " + spec.file + " reads external data from " + json::repr_string(location) +
             ", which the manifest does not list (no sha256)");
    if (!py::is_file(root + "/" + relative))
      refuse("package " + root + ": " + relative + " (external data of " + spec.file + ") is missing");
  }
}

}  // namespace

std::string python_path(const std::string& text) { return py::path_str(text); }

ModelPackage load_package(const std::string& path, bool verify) {
  std::string root = py::path_str(path);
  json::Value manifest = read_manifest(root);
  std::vector<std::string> order;
  ModelPackage package = package_from_manifest(root, std::move(manifest), order);
  check_symlinks(root, py::resolve(root), root, "");
  verify_files(root, package.manifest, verify);
  for (const auto& name : order) check_external_data(root, package.components.at(name), package.manifest.at("files"));
  return package;
}

}  // namespace emseg_rt
