// emseg-rt-segment-raw: segment a uint8 volume plane by plane with a model package, no Python.
//
//   emseg-rt-segment-raw PACKAGE INPUT.raw Z Y X OUTPUT.raw [options]
//   emseg-rt-segment-raw PACKAGE INPUT.zarr OUTPUT.raw [options]
//   options: [--halo N] [--batch N] [--blend center|gaussian] [--backend auto|aoti|tensorrt] [--device cpu|cuda]
//            [--threads N]
//
// INPUT.raw holds Z·Y·X bytes, C order (z slowest). INPUT.zarr is a zarr v3 uint8 (z, y, x) array or an
// OME-Zarr image group (its first dataset), uncompressed or zstd (zarr_v3.hpp); its shape comes from zarr.json.
// OUTPUT.raw receives Z·Y·X label bytes (0 = background, k = class k), written to OUTPUT.raw.partial and
// renamed when every plane is done. The smallest complete use of the C ABI (include/emseg_rt.h): copy it
// into your pipeline.
#include <emseg_rt.h>

#include "zarr_v3.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Arguments {
  const char* package = nullptr;
  const char* input = nullptr;
  const char* output = nullptr;
  bool zarr = false;  // INPUT is a zarr v3 store (shape from its metadata)
  int64_t z = 0, y = 0, x = 0;
  emseg_rt_open_options open{};
  emseg_rt_plane_options plane{};
};

const char* USAGE =
    "usage: emseg-rt-segment-raw PACKAGE (INPUT.raw Z Y X | INPUT.zarr) OUTPUT.raw [--halo N] [--batch N] "
    "[--blend center|gaussian] [--backend auto|aoti|tensorrt] [--device cpu|cuda] [--threads N]";

// Exit codes as the Python CLI: 2 for anything the user can fix, 1 for a bug.
int fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return code;
}

bool positive(const char* text, int64_t& out) {
  char* end = nullptr;
  long long value = std::strtoll(text, &end, 10);
  out = value;
  return end != text && *end == '\0' && value > 0;
}

bool parse(int argc, char** argv, Arguments& args, std::string& problem) {
  emseg_rt_open_options_init(&args.open);
  emseg_rt_plane_options_init(&args.plane);
  std::vector<const char*> positional;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0) {
      positional.push_back(argv[i]);
      continue;
    }
    if (i + 1 >= argc) return problem = flag + " needs a value", false;
    const char* value = argv[++i];
    if (flag == "--halo") args.plane.halo = std::atoi(value);
    else if (flag == "--batch") args.plane.batch = std::atoi(value);
    else if (flag == "--threads") args.open.threads = std::atoi(value);
    else if (flag == "--backend") args.open.backend = value;
    else if (flag == "--device") args.open.device = value;
    else if (flag == "--blend" && std::strcmp(value, "center") == 0) args.plane.blend = EMSEG_RT_BLEND_CENTER;
    else if (flag == "--blend" && std::strcmp(value, "gaussian") == 0) args.plane.blend = EMSEG_RT_BLEND_GAUSSIAN;
    else return problem = flag + " " + value + ": unknown option or value", false;
  }
  if (positional.size() != 6 && positional.size() != 3) return problem = USAGE, false;
  args.package = positional[0];
  args.input = positional[1];
  args.output = positional.back();
  args.zarr = emseg_rt::zarr::is_zarr(args.input);
  if (args.zarr && positional.size() == 6)
    return problem = std::string(args.input) + " is a zarr store: its shape comes from zarr.json, give no Z Y X", false;
  if (!args.zarr && positional.size() == 3)
    return problem = std::string(args.input) + ": not a zarr v3 store (no zarr.json); a raw volume needs Z Y X", false;
  if (!args.zarr && (!positive(positional[2], args.z) || !positive(positional[3], args.y) ||
                     !positive(positional[4], args.x)))
    return problem = "Z, Y and X must be positive integers", false;
  return true;
}

// Where planes come from: a raw file (z slowest) or a zarr v3 array. read_plane returns "" or a one-line problem.
class VolumeInput {
 public:
  virtual ~VolumeInput() = default;
  virtual std::string read_plane(int64_t z, uint8_t* plane) = 0;
};

class RawInput final : public VolumeInput {
 public:
  RawInput(FILE* file, std::string path, size_t plane_bytes) : file_(file), path_(std::move(path)), bytes_(plane_bytes) {}
  ~RawInput() override { std::fclose(file_); }
  std::string read_plane(int64_t, uint8_t* plane) override {  // planes are read in order
    return std::fread(plane, 1, bytes_, file_) == bytes_ ? "" : path_ + ": short read";
  }

 private:
  FILE* file_;
  std::string path_;
  size_t bytes_;
};

class ZarrInput final : public VolumeInput {
 public:
  explicit ZarrInput(const std::string& path) : reader_(path) {}
  const emseg_rt::zarr::ArrayMeta& meta() const { return reader_.meta(); }
  std::string read_plane(int64_t z, uint8_t* plane) override {
    try {
      reader_.read_plane(z, plane);
      return "";
    } catch (const emseg_rt::zarr::ZarrError& error) {
      return error.what();
    }
  }

 private:
  emseg_rt::zarr::PlaneReader reader_;
};

// Opens the input and checks it before the model is loaded: a raw file must hold exactly Z·Y·X bytes; a zarr
// store's metadata must be one this host reads (its shape fills in Z, Y, X). nullptr with `problem` set otherwise.
std::unique_ptr<VolumeInput> open_input(Arguments& args, std::string& problem) {
  if (args.zarr) {
    try {
      auto input = std::make_unique<ZarrInput>(args.input);
      args.z = input->meta().shape[0], args.y = input->meta().shape[1], args.x = input->meta().shape[2];
      return input;
    } catch (const emseg_rt::zarr::ZarrError& error) {
      return problem = error.what(), nullptr;
    }
  }
  FILE* in = std::fopen(args.input, "rb");
  if (in == nullptr) return problem = std::string(args.input) + ": cannot open it for reading", nullptr;
  std::fseek(in, 0, SEEK_END);
  const long long size = std::ftell(in), expected = args.z * args.y * args.x;
  std::fseek(in, 0, SEEK_SET);
  if (size != expected) {
    std::fclose(in);
    return problem = std::string(args.input) + ": holds " + std::to_string(size) + " bytes, Z*Y*X is " +
                     std::to_string(expected), nullptr;
  }
  return std::make_unique<RawInput>(in, args.input, static_cast<size_t>(args.y * args.x));
}

int segment(const Arguments& args, VolumeInput& input, emseg_rt_model* model) {
  const std::string partial = std::string(args.output) + ".partial";
  FILE* out = std::fopen(partial.c_str(), "wb");
  if (out == nullptr) return fail(partial + ": cannot open it for writing");
  const size_t plane_bytes = static_cast<size_t>(args.y * args.x);
  std::vector<uint8_t> plane(plane_bytes), labels(plane_bytes);
  int code = 0;
  for (int64_t z = 0; z < args.z && code == 0; ++z) {
    if (std::string problem = input.read_plane(z, plane.data()); !problem.empty()) code = fail(problem);
    else if (emseg_rt_status status = emseg_rt_segment_plane(model, plane.data(), args.y, args.x, &args.plane,
                                                             labels.data()); status != EMSEG_RT_OK)
      code = fail(emseg_rt_last_error(), status == EMSEG_RT_ERROR_INTERNAL ? 1 : 2);
    else if (std::fwrite(labels.data(), 1, plane_bytes, out) != plane_bytes) code = fail(partial + ": write failed");
  }
  if (std::fclose(out) != 0 && code == 0) code = fail(partial + ": write failed");
  if (code == 0 && std::rename(partial.c_str(), args.output) != 0) code = fail(std::string(args.output) + ": rename failed");
  if (code != 0) std::remove(partial.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (emseg_rt_abi_version() != EMSEG_RT_ABI_VERSION) return fail("libemseg_rt has another ABI version", 1);
  Arguments args;
  std::string problem;
  if (!parse(argc, argv, args, problem)) return fail(problem);
  std::unique_ptr<VolumeInput> input = open_input(args, problem);
  if (input == nullptr) return fail(problem);
  emseg_rt_model* model = nullptr;
  if (emseg_rt_status status = emseg_rt_open(args.package, &args.open, &model); status != EMSEG_RT_OK)
    return fail(emseg_rt_last_error(), status == EMSEG_RT_ERROR_INTERNAL ? 1 : 2);
  emseg_rt_input_spec spec{};
  spec.struct_size = sizeof spec;
  emseg_rt_get_input_spec(model, &spec);
  std::fprintf(stderr, "%s (%s backend): tile %d, %d classes, %lld planes of %lld x %lld\n", emseg_rt_model_name(model),
               emseg_rt_backend_name(model), spec.tile, spec.num_classes, static_cast<long long>(args.z),
               static_cast<long long>(args.y), static_cast<long long>(args.x));
  const int code = segment(args, *input, model);
  emseg_rt_close(model);
  return code;
}
