// Zarr v3 input for the sample host: a uint8 (z, y, x) array, or the first dataset (s0) of an OME-Zarr image
// group, read plane by plane without Python.
//
// Why our own: the host must stay a small C++ program with no dependency beyond libemseg_rt (and libzstd
// when built with EMSEG_RT_WITH_ZSTD); the C/C++ zarr libraries (tensorstore, z5, zarr-cxx) are large
// builds of their own. What is read: zarr.json with node_type "array", data_type uint8, rank 3, a regular
// chunk grid, the "default" or "v2" chunk key encoding, fill_value for missing chunks, and the codecs
// [bytes] or [bytes, zstd]. Anything else is refused with one line (ZarrError).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace emseg_rt::json {
class Value;
}

namespace emseg_rt::zarr {

// A problem with the input the user can fix: one line, naming the path.
struct ZarrError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Index3 = std::array<int64_t, 3>;

// What the host needs from an array's zarr.json.
struct ArrayMeta {
  Index3 shape{};           // (Z, Y, X)
  Index3 chunk_shape{};     // (cz, cy, cx); edge chunks are stored whole (zarr v3 regular grid)
  bool v2_key_encoding = false;  // "v2": "0.1.2"; "default": "c/0/1/2"
  char separator = '/';
  uint8_t fill_value = 0;
  bool zstd = false;        // codecs [bytes, zstd] (else [bytes])
};

// True when `path` holds a zarr.json (an array or a group).
bool is_zarr(const std::string& path);

// Whether this build decodes the zstd codec (EMSEG_RT_WITH_ZSTD).
bool zstd_supported();

// The array to read at `path`: `path` itself when it is an array, the first multiscales dataset's path of an
// OME-Zarr image group (attributes "ome" → "multiscales", or OME-Zarr 0.4's "multiscales"). Throws ZarrError.
std::string resolve_array(const std::string& path);

// Parse an array's zarr.json (already JSON-decoded); `where` names it in errors. Throws ZarrError for
// anything this reader does not handle (dtype, rank, codecs, sharding, chunk grid, key encoding).
ArrayMeta parse_array_metadata(const json::Value& meta, const std::string& where);

// The store key of chunk `index` (relative to the array directory): "c/0/1/2" or "0.1.2".
std::string chunk_key(const ArrayMeta& meta, const Index3& index);

// One stored chunk's bytes → its cz·cy·cx uint8 values, C order. Throws ZarrError (`key` names the chunk).
std::vector<uint8_t> decode_chunk(const ArrayMeta& meta, const std::string& encoded, const std::string& key);

// Reads (Y, X) planes of a zarr v3 uint8 (Z, Y, X) array. Holds one layer of chunks (cz·Y·X bytes) at a
// time: the layer holding the plane asked for, read chunk by chunk when the plane moves to another layer.
class PlaneReader {
 public:
  // Opens `path` (an array or an OME-Zarr image group) and checks its metadata; throws ZarrError.
  explicit PlaneReader(const std::string& path);

  const ArrayMeta& meta() const { return meta_; }
  const std::string& array_path() const { return array_path_; }

  // Plane z (0 <= z < Z) into `plane`, which holds Y·X bytes. Throws ZarrError.
  void read_plane(int64_t z, uint8_t* plane);

 private:
  void load_layer(int64_t layer);

  std::string array_path_;
  ArrayMeta meta_;
  int64_t layer_ = -1;          // the chunk layer (z / cz) held in layer_data_
  std::vector<uint8_t> layer_data_;  // (cz, Y, X)
};

}  // namespace emseg_rt::zarr
