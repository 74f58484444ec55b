#include "pyfs.hpp"

#include <filesystem>
#include <system_error>

namespace fs = std::filesystem;

namespace emseg_rt::py {

std::vector<std::string> posix_parts(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('/', start);
    if (end == std::string::npos) end = text.size();
    std::string part = text.substr(start, end - start);
    if (!part.empty() && part != ".") parts.push_back(part);
    start = end + 1;
  }
  return parts;
}

std::string path_str(const std::string& text) {
  std::string out = !text.empty() && text[0] == '/' ? "/" : "";
  std::vector<std::string> parts = posix_parts(text);
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

std::string resolve(const std::string& text) {
  std::error_code error;
  fs::path absolute = fs::absolute(fs::path(text.empty() ? "." : text), error);
  fs::path resolved = fs::weakly_canonical(absolute, error);
  if (error) resolved = absolute.lexically_normal();
  std::string out = resolved.string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

bool is_relative_to(const std::string& path, const std::string& base) {
  std::vector<std::string> a = posix_parts(path), b = posix_parts(base);
  if (b.size() > a.size()) return false;
  for (size_t i = 0; i < b.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

bool is_file(const std::string& text) {
  std::error_code error;
  return fs::is_regular_file(fs::path(text), error);
}

bool is_dir(const std::string& text) {
  std::error_code error;
  return fs::is_directory(fs::path(text), error);
}

bool is_symlink(const std::string& text) {
  std::error_code error;
  return fs::is_symlink(fs::symlink_status(fs::path(text), error));
}

std::string type_name(const json::Value& value) {
  switch (value.kind) {
    case json::Kind::Null: return "NoneType";
    case json::Kind::Bool: return "bool";
    case json::Kind::Number: return value.is_integer ? "int" : "float";
    case json::Kind::String: return "str";
    case json::Kind::Array: return "list";
    case json::Kind::Object: return "dict";
  }
  return "object";
}

const json::Value& subscript(const json::Value& value, const std::string& key) {
  if (value.kind == json::Kind::Object) return value.at(key);
  if (value.kind == json::Kind::Array)
    throw json::PyError("TypeError", "list indices must be integers or slices, not str");
  if (value.kind == json::Kind::String)
    throw json::PyError("TypeError", "string indices must be integers, not 'str'");
  throw json::PyError("TypeError", "'" + type_name(value) + "' object is not subscriptable");
}

const json::Value* get(const json::Value& value, const std::string& key) {
  if (value.kind != json::Kind::Object)
    throw json::PyError("AttributeError", "'" + type_name(value) + "' object has no attribute 'get'");
  return value.find(key);
}

std::vector<json::Value> iterate(const json::Value& value) {
  if (value.kind == json::Kind::Array) return value.items;
  std::vector<json::Value> out;
  if (value.kind == json::Kind::Object) {
    for (const auto& member : value.members) {
      json::Value key;
      key.kind = json::Kind::String;
      key.text = member.first;
      out.push_back(key);
    }
    return out;
  }
  if (value.kind == json::Kind::String) {
    for (size_t i = 0; i < value.text.size();) {  // one UTF-8 character at a time
      size_t length = 1;
      while (i + length < value.text.size() && (static_cast<unsigned char>(value.text[i + length]) & 0xC0) == 0x80)
        ++length;
      json::Value item;
      item.kind = json::Kind::String;
      item.text = value.text.substr(i, length);
      out.push_back(item);
      i += length;
    }
    return out;
  }
  throw json::PyError("TypeError", "'" + type_name(value) + "' object is not iterable");
}

const std::vector<std::pair<std::string, json::Value>>& items(const json::Value& value) {
  if (value.kind != json::Kind::Object)
    throw json::PyError("AttributeError", "'" + type_name(value) + "' object has no attribute 'items'");
  return value.members;
}

}  // namespace emseg_rt::py
