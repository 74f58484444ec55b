// Zarr v3 uint8 (z, y, x) input for emseg-rt-segment-raw (see zarr_v3.hpp).
#include "zarr_v3.hpp"

#include "json.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#ifdef EMSEG_RT_WITH_ZSTD
#include <zstd.h>
#endif

namespace emseg_rt::zarr {

namespace fs = std::filesystem;

namespace {

bool read_file(const std::string& path, std::string& bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

json::Value load_metadata(const std::string& directory) {
  const std::string file = (fs::path(directory) / "zarr.json").string();
  std::string text;
  if (!read_file(file, text)) {
    if (fs::exists(fs::path(directory) / ".zarray") || fs::exists(fs::path(directory) / ".zgroup"))
      throw ZarrError(directory + ": a zarr v2 store (.zarray/.zgroup); the host reads zarr v3 only");
    throw ZarrError(directory + ": no zarr.json (not a zarr v3 array or OME-Zarr image)");
  }
  try {
    return json::parse(text);
  } catch (const json::PyError& error) {
    throw ZarrError(file + ": not valid JSON (" + error.what() + ")");
  }
}

// A JSON integer in [low, high], or ZarrError naming `what`.
int64_t integer(const json::Value* value, int64_t low, int64_t high, const std::string& what) {
  if (value == nullptr || !value->is_number() || !value->is_integer || value->number < static_cast<double>(low) ||
      value->number > static_cast<double>(high))
    throw ZarrError(what + " must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]" +
                    (value == nullptr ? " (missing)" : ", not " + json::repr(*value)));
  return static_cast<int64_t>(value->number);
}

// A JSON list of 3 integers >= low, or ZarrError (rank first, so a 2D array reads as a rank problem).
Index3 triple(const json::Value* value, int64_t low, const std::string& what) {
  if (value == nullptr || !value->is_array()) throw ZarrError(what + " is missing or not a list");
  if (value->items.size() != 3)
    throw ZarrError(what + " has " + std::to_string(value->items.size()) +
                    " dimensions; the host reads 3D (z, y, x) arrays");
  Index3 out{};
  for (size_t i = 0; i < 3; ++i) out[i] = integer(&value->items[i], low, INT64_C(1) << 40, what + "[" + std::to_string(i) + "]");
  return out;
}

std::string name_of(const json::Value& value) {
  const json::Value* name = value.find("name");
  return name != nullptr && name->is_string() ? name->text : std::string();
}

void parse_key_encoding(const json::Value* encoding, ArrayMeta& meta, const std::string& where) {
  const std::string name = encoding == nullptr ? std::string() : name_of(*encoding);
  if (name != "default" && name != "v2")
    throw ZarrError(where + ": chunk_key_encoding " + (encoding == nullptr ? "missing" : json::repr(*encoding)) +
                    " is not read (default or v2)");
  meta.v2_key_encoding = name == "v2";
  meta.separator = meta.v2_key_encoding ? '.' : '/';
  const json::Value* configuration = encoding->find("configuration");
  const json::Value* separator = configuration == nullptr ? nullptr : configuration->find("separator");
  if (separator == nullptr) return;
  if (!separator->is_string() || (separator->text != "/" && separator->text != "."))
    throw ZarrError(where + ": chunk key separator " + json::repr(*separator) + " is not read ('/' or '.')");
  meta.separator = separator->text[0];
}

// codecs [bytes] or [bytes, zstd]: endianness is irrelevant for uint8.
void parse_codecs(const json::Value* codecs, ArrayMeta& meta, const std::string& where) {
  if (codecs == nullptr || !codecs->is_array() || codecs->items.empty())
    throw ZarrError(where + ": codecs missing or empty");
  for (const json::Value& codec : codecs->items)
    if (name_of(codec) == "sharding_indexed")
      throw ZarrError(where + ": sharded arrays (codec 'sharding_indexed') are not read; rewrite without shards");
  std::vector<std::string> names;
  for (const json::Value& codec : codecs->items) names.push_back(name_of(codec));
  const bool bytes_only = names.size() == 1 && names[0] == "bytes";
  meta.zstd = names.size() == 2 && names[0] == "bytes" && names[1] == "zstd";
  if (!bytes_only && !meta.zstd) {
    std::string listed;
    for (const std::string& name : names) listed += (listed.empty() ? "'" : ", '") + name + "'";
    throw ZarrError(where + ": codecs [" + listed + "] are not read (bytes, optionally followed by zstd)");
  }
  if (meta.zstd && !zstd_supported())
    throw ZarrError(where + ": zstd-compressed, and this emseg-rt-segment-raw was built without zstd "
                    "(rebuild with -DEMSEG_RT_WITH_ZSTD=ON, which needs zstd.h and libzstd)");
}

}  // namespace

bool zstd_supported() {
#ifdef EMSEG_RT_WITH_ZSTD
  return true;
#else
  return false;
#endif
}

bool is_zarr(const std::string& path) {
  std::error_code error;
  return fs::is_directory(path, error) &&
         (fs::exists(fs::path(path) / "zarr.json", error) || fs::exists(fs::path(path) / ".zarray", error) ||
          fs::exists(fs::path(path) / ".zgroup", error));
}

std::string resolve_array(const std::string& path) {
  const json::Value meta = load_metadata(path);
  const json::Value* node_type = meta.find("node_type");
  if (node_type != nullptr && node_type->is_string() && node_type->text == "array") return path;
  if (node_type == nullptr || !node_type->is_string() || node_type->text != "group")
    throw ZarrError(path + ": zarr.json has no node_type 'array' or 'group'");
  const json::Value* attributes = meta.find("attributes");
  const json::Value* ome = attributes == nullptr ? nullptr : attributes->find("ome");
  const json::Value* multiscales = ome != nullptr ? ome->find("multiscales") : nullptr;
  if (multiscales == nullptr && attributes != nullptr) multiscales = attributes->find("multiscales");
  if (multiscales == nullptr || !multiscales->is_array() || multiscales->items.empty())
    throw ZarrError(path + ": a zarr group without OME-Zarr multiscales; give the path of an array");
  const json::Value* datasets = multiscales->items[0].find("datasets");
  const json::Value* dataset = datasets == nullptr || !datasets->is_array() || datasets->items.empty()
                                   ? nullptr : datasets->items[0].find("path");
  if (dataset == nullptr || !dataset->is_string() || dataset->text.empty())
    throw ZarrError(path + ": OME-Zarr multiscales[0] has no datasets[0].path");
  const fs::path relative(dataset->text);
  if (relative.is_absolute() || std::find(relative.begin(), relative.end(), "..") != relative.end())
    throw ZarrError(path + ": OME-Zarr dataset path " + json::repr(*dataset) + " leaves the image group");
  return (fs::path(path) / relative).string();
}

ArrayMeta parse_array_metadata(const json::Value& meta, const std::string& where) {
  if (!meta.is_object()) throw ZarrError(where + ": zarr.json is not a JSON object");
  const json::Value* format = meta.find("zarr_format");
  if (format == nullptr || !json::equals_int(*format, 3))
    throw ZarrError(where + ": zarr_format " + (format == nullptr ? "missing" : json::repr(*format)) +
                    "; the host reads zarr v3 only");
  const json::Value* node_type = meta.find("node_type");
  if (node_type == nullptr || !node_type->is_string() || node_type->text != "array")
    throw ZarrError(where + ": not a zarr array (node_type " + (node_type ? json::repr(*node_type) : "missing") + ")");
  const json::Value* data_type = meta.find("data_type");
  if (data_type == nullptr || !data_type->is_string() || data_type->text != "uint8")
    throw ZarrError(where + ": data_type " + (data_type ? json::repr(*data_type) : "missing") +
                    " is not read (uint8 only)");
  ArrayMeta out;
  out.shape = triple(meta.find("shape"), 1, where + ": shape");
  const json::Value* grid = meta.find("chunk_grid");
  if (grid == nullptr || name_of(*grid) != "regular")
    throw ZarrError(where + ": chunk_grid " + (grid ? json::repr(*grid) : "missing") + " is not read (regular only)");
  const json::Value* grid_configuration = grid->find("configuration");
  out.chunk_shape = triple(grid_configuration ? grid_configuration->find("chunk_shape") : nullptr, 1,
                           where + ": chunk_shape");
  parse_key_encoding(meta.find("chunk_key_encoding"), out, where);
  out.fill_value = static_cast<uint8_t>(integer(meta.find("fill_value"), 0, 255, where + ": fill_value"));
  const json::Value* transformers = meta.find("storage_transformers");
  if (transformers != nullptr && !(transformers->is_array() && transformers->items.empty()))
    throw ZarrError(where + ": storage_transformers are not read");
  parse_codecs(meta.find("codecs"), out, where);
  return out;
}

std::string chunk_key(const ArrayMeta& meta, const Index3& index) {
  std::string key = meta.v2_key_encoding ? "" : std::string("c") + meta.separator;
  for (size_t i = 0; i < index.size(); ++i) key += (i ? std::string(1, meta.separator) : "") + std::to_string(index[i]);
  return key;
}

std::vector<uint8_t> decode_chunk(const ArrayMeta& meta, const std::string& encoded, const std::string& key) {
  const size_t expected = static_cast<size_t>(meta.chunk_shape[0] * meta.chunk_shape[1] * meta.chunk_shape[2]);
  std::vector<uint8_t> values(expected);
  size_t size = encoded.size();
  if (meta.zstd) {
#ifdef EMSEG_RT_WITH_ZSTD
    size = ZSTD_decompress(values.data(), expected, encoded.data(), encoded.size());
    if (ZSTD_isError(size)) throw ZarrError(key + ": zstd cannot decode it (" + ZSTD_getErrorName(size) + ")");
#else
    throw ZarrError(key + ": zstd-compressed, and this build has no zstd (EMSEG_RT_WITH_ZSTD)");
#endif
  } else if (size == expected) {
    std::memcpy(values.data(), encoded.data(), expected);
  }
  if (size != expected)
    throw ZarrError(key + ": holds " + std::to_string(size) + " bytes, a chunk of " + std::to_string(expected));
  return values;
}

PlaneReader::PlaneReader(const std::string& path) : array_path_(resolve_array(path)) {
  meta_ = parse_array_metadata(load_metadata(array_path_), (fs::path(array_path_) / "zarr.json").string());
}

void PlaneReader::load_layer(int64_t layer) {
  const auto [depth, height, width] = meta_.shape;
  const auto [cz, cy, cx] = meta_.chunk_shape;
  const int64_t z0 = layer * cz, planes = std::min(cz, depth - z0);
  layer_data_.assign(static_cast<size_t>(planes * height * width), meta_.fill_value);
  std::string encoded;
  for (int64_t y0 = 0; y0 < height; y0 += cy) {
    for (int64_t x0 = 0; x0 < width; x0 += cx) {
      const std::string key = chunk_key(meta_, {layer, y0 / cy, x0 / cx});
      const fs::path file = fs::path(array_path_) / key;
      std::error_code missing;
      if (!fs::exists(file, missing)) continue;  // never written: fill_value
      if (!read_file(file.string(), encoded)) throw ZarrError(file.string() + ": cannot read it");
      const std::vector<uint8_t> chunk = decode_chunk(meta_, encoded, file.string());
      const int64_t rows = std::min(cy, height - y0), columns = std::min(cx, width - x0);
      for (int64_t dz = 0; dz < planes; ++dz)
        for (int64_t dy = 0; dy < rows; ++dy)
          std::memcpy(&layer_data_[static_cast<size_t>((dz * height + y0 + dy) * width + x0)],
                      &chunk[static_cast<size_t>((dz * cy + dy) * cx)], static_cast<size_t>(columns));
    }
  }
  layer_ = layer;
}

void PlaneReader::read_plane(int64_t z, uint8_t* plane) {
  const auto [depth, height, width] = meta_.shape;
  if (z < 0 || z >= depth) throw ZarrError(array_path_ + ": plane " + std::to_string(z) + " is outside the array");
  const int64_t cz = meta_.chunk_shape[0];
  if (z / cz != layer_) load_layer(z / cz);
  const size_t plane_bytes = static_cast<size_t>(height * width);
  std::memcpy(plane, &layer_data_[static_cast<size_t>(z - layer_ * cz) * plane_bytes], plane_bytes);
}

}  // namespace emseg_rt::zarr
