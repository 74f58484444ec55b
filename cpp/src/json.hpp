// A small JSON reader for manifest.json (and nothing else).
//
// Why our own: the torch wheel ships no JSON library in include/ (checked: no nlohmann/json.hpp), the
// machines have no system one, and the manifest needs only parsing, lookups and Python-style repr() for
// error messages that match emseg_rt/package.py word for word. It follows Python's json.loads: NaN,
// Infinity and -Infinity are accepted, a repeated key keeps its last value, object order is kept.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace emseg_rt::json {

enum class Kind { Null, Bool, Number, String, Array, Object };

class Value {
 public:
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  bool is_integer = false;           // written without '.', 'e' (Python int)
  std::string text;                  // String: the decoded string; Number: the literal as written
  std::vector<Value> items;          // Array
  std::vector<std::pair<std::string, Value>> members;  // Object, in order, keys unique

  bool is_null() const { return kind == Kind::Null; }
  bool is_object() const { return kind == Kind::Object; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Number; }

  // The member `key` of an object, nullptr when absent (or when this is not an object).
  const Value* find(const std::string& key) const;
  // The member `key`, or throws KeyError (as Python's dict[key]).
  const Value& at(const std::string& key) const;
};

// Python exception names, so that "malformed manifest.json (KeyError: 'tile')" reads as in Python.
struct PyError : std::runtime_error {
  std::string type;
  PyError(std::string type_name, const std::string& message)
      : std::runtime_error(message), type(std::move(type_name)) {}
};

// Parse UTF-8 `data`; throws PyError("JSONDecodeError", <Python's message>) on bad input.
Value parse(const std::string& data);

// Python's repr() of the parsed value: None, True, 1, 2.5, 'text', [1, 2], {'a': 1}.
std::string repr(const Value& value);
// repr() of a Python str.
std::string repr_string(const std::string& text);
// Python's str(): the text itself for strings, repr() otherwise.
std::string str(const Value& value);
// Python's int(value) for a number (truncates floats), a bool or a numeric string; throws PyError.
int64_t to_int(const Value& value);
// Python's float(value); throws PyError.
double to_float(const Value& value);
// Python's `value == 1`-style equality of a JSON value with an integer (True == 1, 1.0 == 1).
bool equals_int(const Value& value, int64_t expected);

}  // namespace emseg_rt::json
