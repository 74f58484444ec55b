// JSON reader with Python json.loads' rules and error messages (see json.hpp).
#include "json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace emseg_rt::json {

const Value* Value::find(const std::string& key) const {
  if (kind != Kind::Object) return nullptr;
  for (const auto& member : members)
    if (member.first == key) return &member.second;
  return nullptr;
}

const Value& Value::at(const std::string& key) const {
  if (kind != Kind::Object) throw PyError("TypeError", "not a JSON object (looking up " + repr_string(key) + ")");
  const Value* found = find(key);
  if (found == nullptr) throw PyError("KeyError", repr_string(key));
  return *found;
}

namespace {

class Parser {
 public:
  explicit Parser(const std::string& doc) : doc_(doc) {}

  Value document() {
    skip_space();
    Value value = parse_value("Expecting value");
    skip_space();
    if (pos_ != doc_.size()) fail("Extra data", pos_);
    return value;
  }

 private:
  const std::string& doc_;
  size_t pos_ = 0;

  // Python reports positions in characters (code points) of the decoded text.
  [[noreturn]] void fail(const std::string& what, size_t byte_pos) const {
    size_t chars = 0, line = 1, line_start = 0;
    for (size_t i = 0; i < byte_pos && i < doc_.size(); ++i) {
      if ((static_cast<unsigned char>(doc_[i]) & 0xC0) == 0x80) continue;
      if (doc_[i] == '\n') {
        ++line;
        line_start = chars + 1;
      }
      ++chars;
    }
    throw PyError("JSONDecodeError", what + ": line " + std::to_string(line) + " column " +
                                         std::to_string(chars - line_start + 1) + " (char " +
                                         std::to_string(chars) + ")");
  }

  void skip_space() {
    while (pos_ < doc_.size() &&
           (doc_[pos_] == ' ' || doc_[pos_] == '\t' || doc_[pos_] == '\n' || doc_[pos_] == '\r'))
      ++pos_;
  }

  bool starts(const char* word) const { return doc_.compare(pos_, std::char_traits<char>::length(word), word) == 0; }

  Value parse_value(const char* expecting) {
    if (pos_ >= doc_.size()) fail(expecting, pos_);
    char c = doc_[pos_];
    if (c == '{') return parse_object();
    if (c == '[') return parse_array();
    if (c == '"') return parse_string_value();
    Value value;
    if (starts("null")) { pos_ += 4; return value; }
    if (starts("true")) { pos_ += 4; value.kind = Kind::Bool; value.boolean = true; return value; }
    if (starts("false")) { pos_ += 5; value.kind = Kind::Bool; return value; }
    if (starts("NaN")) return special(3, std::numeric_limits<double>::quiet_NaN(), "nan");
    if (starts("Infinity")) return special(8, std::numeric_limits<double>::infinity(), "inf");
    if (starts("-Infinity")) return special(9, -std::numeric_limits<double>::infinity(), "-inf");
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(expecting);
    fail(expecting, pos_);
  }

  Value special(size_t length, double number, const char* text) {
    pos_ += length;
    Value value;
    value.kind = Kind::Number;
    value.number = number;
    value.text = text;
    return value;
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  Value parse_number(const char* expecting) {
    size_t start = pos_, i = pos_;
    if (doc_[i] == '-') ++i;
    if (i >= doc_.size() || !digit(doc_[i])) fail(expecting, start);
    if (doc_[i] == '0') ++i;
    else while (i < doc_.size() && digit(doc_[i])) ++i;
    bool integer = true;
    if (i + 1 < doc_.size() && doc_[i] == '.' && digit(doc_[i + 1])) {
      integer = false;
      i += 2;
      while (i < doc_.size() && digit(doc_[i])) ++i;
    }
    if (i < doc_.size() && (doc_[i] == 'e' || doc_[i] == 'E')) {
      size_t j = i + 1;
      if (j < doc_.size() && (doc_[j] == '+' || doc_[j] == '-')) ++j;
      if (j < doc_.size() && digit(doc_[j])) {
        integer = false;
        i = j;
        while (i < doc_.size() && digit(doc_[i])) ++i;
      }
    }
    Value value;
    value.kind = Kind::Number;
    value.text = doc_.substr(start, i - start);
    value.is_integer = integer;
    value.number = std::strtod(value.text.c_str(), nullptr);
    pos_ = i;
    return value;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  uint32_t hex4(size_t at) const {
    if (at + 4 > doc_.size()) fail("Invalid \\uXXXX escape", at - 1);
    uint32_t code = 0;
    for (size_t k = at; k < at + 4; ++k) {
      char c = doc_[k];
      int v = digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (v < 0) fail("Invalid \\uXXXX escape", at - 1);
      code = code * 16 + static_cast<uint32_t>(v);
    }
    return code;
  }

  std::string parse_string() {  // at the opening quote
    size_t begin = pos_++;
    std::string out;
    while (true) {
      if (pos_ >= doc_.size()) fail("Unterminated string starting at", begin);
      unsigned char c = static_cast<unsigned char>(doc_[pos_]);
      if (c == '"') { ++pos_; return out; }
      if (c < 0x20) fail("Invalid control character at", pos_);
      if (c != '\\') { out += static_cast<char>(c); ++pos_; continue; }
      if (pos_ + 1 >= doc_.size()) fail("Unterminated string starting at", begin);
      char e = doc_[pos_ + 1];
      const char* simple = "\"\\/bfnrt";
      const char* mapped = "\"\\/\b\f\n\r\t";
      if (const char* hit = std::char_traits<char>::find(simple, 8, e)) {
        out += mapped[hit - simple];
        pos_ += 2;
        continue;
      }
      if (e != 'u') fail("Invalid \\escape", pos_);
      uint32_t code = hex4(pos_ + 2);
      pos_ += 6;
      if (code >= 0xD800 && code <= 0xDBFF && pos_ + 1 < doc_.size() && doc_[pos_] == '\\' && doc_[pos_ + 1] == 'u') {
        uint32_t low = hex4(pos_ + 2);
        if (low >= 0xDC00 && low <= 0xDFFF) {
          code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          pos_ += 6;
        }
      }
      append_utf8(out, code);
    }
  }

  Value parse_string_value() {
    Value value;
    value.kind = Kind::String;
    value.text = parse_string();
    return value;
  }

  Value parse_array() {
    Value value;
    value.kind = Kind::Array;
    ++pos_;
    skip_space();
    if (pos_ < doc_.size() && doc_[pos_] == ']') { ++pos_; return value; }
    while (true) {
      skip_space();
      value.items.push_back(parse_value("Expecting value"));
      skip_space();
      if (pos_ < doc_.size() && doc_[pos_] == ']') { ++pos_; return value; }
      if (pos_ >= doc_.size() || doc_[pos_] != ',') fail("Expecting ',' delimiter", pos_);
      ++pos_;
    }
  }

  Value parse_object() {
    Value value;
    value.kind = Kind::Object;
    ++pos_;
    skip_space();
    if (pos_ < doc_.size() && doc_[pos_] == '}') { ++pos_; return value; }
    while (true) {
      if (pos_ >= doc_.size() || doc_[pos_] != '"') fail("Expecting property name enclosed in double quotes", pos_);
      std::string key = parse_string();
      skip_space();
      if (pos_ >= doc_.size() || doc_[pos_] != ':') fail("Expecting ':' delimiter", pos_);
      ++pos_;
      skip_space();
      Value member = parse_value("Expecting value");
      bool replaced = false;
      for (auto& existing : value.members)
        if (existing.first == key) { existing.second = std::move(member); replaced = true; break; }
      if (!replaced) value.members.emplace_back(std::move(key), std::move(member));
      skip_space();
      if (pos_ < doc_.size() && doc_[pos_] == '}') { ++pos_; return value; }
      if (pos_ >= doc_.size() || doc_[pos_] != ',') fail("Expecting ',' delimiter", pos_);
      ++pos_;
      skip_space();
    }
  }
};

// Python's repr(float): the shortest digits that read back to the same double.
std::string repr_float(double number) {
  if (std::isnan(number)) return "nan";
  if (std::isinf(number)) return number > 0 ? "inf" : "-inf";
  char buffer[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*e", precision - 1, number);
    if (std::strtod(buffer, nullptr) == number) break;
  }
  std::string sci(buffer);  // d.ddde±XX
  size_t e = sci.find('e');
  int exponent = std::atoi(sci.c_str() + e + 1);
  std::string sign = sci[0] == '-' ? "-" : "";
  std::string digits;
  for (size_t i = sign.size(); i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  if (exponent < -4 || exponent >= 16) {
    std::string mantissa = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char exp_text[16];
    std::snprintf(exp_text, sizeof exp_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return sign + mantissa + exp_text;
  }
  if (exponent < 0) return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  size_t point = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= point) return sign + digits + std::string(point - digits.size(), '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

}  // namespace

Value parse(const std::string& data) {
  Parser parser(data);
  return parser.document();
}

std::string repr_string(const std::string& text) {
  bool has_single = text.find('\'') != std::string::npos, has_double = text.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : text) {
    if (c == static_cast<unsigned char>(quote) || c == '\\') { out += '\\'; out += static_cast<char>(c); }
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else out += static_cast<char>(c);
  }
  return out + quote;
}

std::string repr(const Value& value) {
  switch (value.kind) {
    case Kind::Null: return "None";
    case Kind::Bool: return value.boolean ? "True" : "False";
    case Kind::Number: return value.is_integer ? value.text : repr_float(value.number);
    case Kind::String: return repr_string(value.text);
    case Kind::Array: {
      std::string out = "[";
      for (size_t i = 0; i < value.items.size(); ++i) out += (i ? ", " : "") + repr(value.items[i]);
      return out + "]";
    }
    case Kind::Object: {
      std::string out = "{";
      for (size_t i = 0; i < value.members.size(); ++i)
        out += (i ? ", " : "") + repr_string(value.members[i].first) + ": " + repr(value.members[i].second);
      return out + "}";
    }
  }
  return "";
}

std::string str(const Value& value) { return value.kind == Kind::String ? value.text : repr(value); }

int64_t to_int(const Value& value) {
  if (value.kind == Kind::Bool) return value.boolean ? 1 : 0;
  if (value.kind == Kind::Number) {
    if (!std::isfinite(value.number))
      throw PyError(std::isnan(value.number) ? "ValueError" : "OverflowError",
                    std::isnan(value.number) ? "cannot convert float NaN to integer"
                                             : "cannot convert float infinity to integer");
    return value.is_integer ? std::strtoll(value.text.c_str(), nullptr, 10) : static_cast<int64_t>(value.number);
  }
  if (value.kind == Kind::String) {
    char* end = nullptr;
    long long parsed = std::strtoll(value.text.c_str(), &end, 10);
    if (!value.text.empty() && end && *end == '\0') return parsed;
    throw PyError("ValueError", "invalid literal for int() with base 10: " + repr_string(value.text));
  }
  const char* type = value.kind == Kind::Null ? "NoneType" : value.kind == Kind::Array ? "list" : "dict";
  throw PyError("TypeError", std::string("int() argument must be a string, a bytes-like object or a real number, "
                                         "not '") + type + "'");
}

double to_float(const Value& value) {
  if (value.kind == Kind::Number) return value.number;
  if (value.kind == Kind::Bool) return value.boolean ? 1.0 : 0.0;
  if (value.kind == Kind::String) {
    char* end = nullptr;
    double parsed = std::strtod(value.text.c_str(), &end);
    if (!value.text.empty() && end && *end == '\0') return parsed;
    throw PyError("ValueError", "could not convert string to float: " + repr_string(value.text));
  }
  const char* type = value.kind == Kind::Null ? "NoneType" : value.kind == Kind::Array ? "list" : "dict";
  throw PyError("TypeError", std::string("float() argument must be a string or a real number, not '") + type + "'");
}

bool equals_int(const Value& value, int64_t expected) {
  if (value.kind == Kind::Bool) return (value.boolean ? 1 : 0) == expected;
  if (value.kind != Kind::Number) return false;
  return value.number == static_cast<double>(expected);
}

}  // namespace emseg_rt::json
