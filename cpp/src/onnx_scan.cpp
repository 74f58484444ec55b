// Protobuf wire-format walk over the ONNX messages that can hold tensors (field numbers from onnx.proto3).
#include "onnx_scan.hpp"

#include <fstream>
#include <set>
#include <sstream>

#include "error.hpp"

namespace emseg_rt {
namespace {

// onnx.proto3 field numbers.
enum : uint32_t {
  MODEL_GRAPH = 7, MODEL_FUNCTIONS = 25,
  GRAPH_NODE = 1, GRAPH_INITIALIZER = 5, GRAPH_SPARSE_INITIALIZER = 15,
  NODE_ATTRIBUTE = 5, FUNCTION_NODE = 7,
  ATTR_T = 5, ATTR_G = 6, ATTR_TENSORS = 10, ATTR_GRAPHS = 11, ATTR_SPARSE_TENSOR = 22, ATTR_SPARSE_TENSORS = 23,
  SPARSE_VALUES = 1, SPARSE_INDICES = 2,
  TENSOR_EXTERNAL_DATA = 13, TENSOR_DATA_LOCATION = 14,
  ENTRY_KEY = 1, ENTRY_VALUE = 2,
};

struct DecodeError {};

struct Field {
  uint32_t number;
  uint32_t wire;
  uint64_t varint;
  const char* data;
  size_t size;
};

class Reader {
 public:
  Reader(const char* begin, size_t size) : at_(begin), end_(begin + size) {}
  bool done() const { return at_ >= end_; }

  Field next() {
    uint64_t key = varint();
    Field field{static_cast<uint32_t>(key >> 3), static_cast<uint32_t>(key & 7), 0, nullptr, 0};
    if (field.wire == 0) field.varint = varint();
    else if (field.wire == 1) skip(8);
    else if (field.wire == 5) skip(4);
    else if (field.wire == 2) {
      uint64_t length = varint();
      if (length > static_cast<uint64_t>(end_ - at_)) throw DecodeError{};
      field.data = at_;
      field.size = static_cast<size_t>(length);
      at_ += length;
    } else throw DecodeError{};
    if (field.number == 0) throw DecodeError{};
    return field;
  }

 private:
  const char* at_;
  const char* end_;

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= end_) throw DecodeError{};
      uint8_t byte = static_cast<uint8_t>(*at_++);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    throw DecodeError{};
  }
  void skip(size_t count) {
    if (count > static_cast<size_t>(end_ - at_)) throw DecodeError{};
    at_ += count;
  }
};

using Locations = std::set<std::string>;

void tensor(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  bool external = false;
  std::string location;
  bool found = false;
  while (!reader.done()) {
    Field field = reader.next();
    if (field.number == TENSOR_DATA_LOCATION && field.wire == 0) external = field.varint == 1;
    if (field.number != TENSOR_EXTERNAL_DATA || field.wire != 2) continue;
    Reader entry(field.data, field.size);
    std::string key, value;
    while (!entry.done()) {
      Field part = entry.next();
      if (part.wire != 2) continue;
      if (part.number == ENTRY_KEY) key.assign(part.data, part.size);
      if (part.number == ENTRY_VALUE) value.assign(part.data, part.size);
    }
    if (key == "location" && !found) {  // the first "location" entry, as Python's next(...)
      location = value;
      found = true;
    }
  }
  if (external) out.insert(location);
}

void sparse(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  while (!reader.done()) {
    Field field = reader.next();
    if (field.wire == 2 && (field.number == SPARSE_VALUES || field.number == SPARSE_INDICES))
      tensor(field.data, field.size, out);
  }
}

void graph(const char* data, size_t size, Locations& out);

void attribute(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  while (!reader.done()) {
    Field field = reader.next();
    if (field.wire != 2) continue;
    if (field.number == ATTR_T || field.number == ATTR_TENSORS) tensor(field.data, field.size, out);
    else if (field.number == ATTR_SPARSE_TENSOR || field.number == ATTR_SPARSE_TENSORS) sparse(field.data, field.size, out);
    else if (field.number == ATTR_G || field.number == ATTR_GRAPHS) graph(field.data, field.size, out);
  }
}

void node(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  while (!reader.done()) {
    Field field = reader.next();
    if (field.wire == 2 && field.number == NODE_ATTRIBUTE) attribute(field.data, field.size, out);
  }
}

void graph(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  while (!reader.done()) {
    Field field = reader.next();
    if (field.wire != 2) continue;
    if (field.number == GRAPH_INITIALIZER) tensor(field.data, field.size, out);
    else if (field.number == GRAPH_SPARSE_INITIALIZER) sparse(field.data, field.size, out);
    else if (field.number == GRAPH_NODE) node(field.data, field.size, out);
  }
}

void function(const char* data, size_t size, Locations& out) {
  Reader reader(data, size);
  while (!reader.done()) {
    Field field = reader.next();
    if (field.wire == 2 && field.number == FUNCTION_NODE) node(field.data, field.size, out);
  }
}

}  // namespace

std::vector<std::string> external_data_locations(const std::string& onnx_path) {
  std::ifstream in(onnx_path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  if (bytes.find("location") == std::string::npos) return {};
  Locations out;
  try {
    Reader reader(bytes.data(), bytes.size());
    while (!reader.done()) {
      Field field = reader.next();
      if (field.wire != 2) continue;
      if (field.number == MODEL_GRAPH) graph(field.data, field.size, out);
      else if (field.number == MODEL_FUNCTIONS) function(field.data, field.size, out);
    }
  } catch (const DecodeError&) {
    throw Error(EMSEG_RT_ERROR_PACKAGE, onnx_path + ": not a readable ONNX graph (Error parsing message)");
  }
  return {out.begin(), out.end()};
}

}  // namespace emseg_rt
