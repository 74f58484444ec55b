// Python-equivalent path and value helpers for porting emseg_rt/package.py message for message.
#pragma once

#include <string>
#include <vector>

#include "json.hpp"

namespace emseg_rt::py {

// str(pathlib.Path(text)).
std::string path_str(const std::string& text);
// PurePosixPath(text).parts, without the leading '/'.
std::vector<std::string> posix_parts(const std::string& text);
// Path(text).resolve() (non-strict: symlinks resolved as far as the path exists).
std::string resolve(const std::string& text);
// Path(a).is_relative_to(b) for two resolved, absolute paths.
bool is_relative_to(const std::string& path, const std::string& base);
// Path(text).is_file() / is_dir() / is_symlink().
bool is_file(const std::string& text);
bool is_dir(const std::string& text);
bool is_symlink(const std::string& text);
// The Python type name of a JSON value ('dict', 'list', 'str', 'int', 'float', 'bool', 'NoneType').
std::string type_name(const json::Value& value);
// value[key] with Python's KeyError / TypeError for a missing key or a value that is not a dict.
const json::Value& subscript(const json::Value& value, const std::string& key);
// dict.get(key) for a dict (nullptr when absent); AttributeError for anything else.
const json::Value* get(const json::Value& value, const std::string& key);
// The items of an iterable JSON value as Python iterates them (a list's items, a dict's keys as strings,
// a string's characters); TypeError otherwise.
std::vector<json::Value> iterate(const json::Value& value);
// dict.items() (AttributeError when not a dict).
const std::vector<std::pair<std::string, json::Value>>& items(const json::Value& value);

}  // namespace emseg_rt::py
