/* emseg_rt.h: the C ABI of emseg-rt (segment EM planes with an exported model package, no Python).
 *
 * Rules of this interface:
 *   - opaque handles, plain C types, no C++ exceptions across it;
 *   - every function that can fail returns an emseg_rt_status; on failure, emseg_rt_last_error() holds a
 *     one-line message for the calling thread (the same text the Python package loader gives for the same
 *     refused package), valid until that thread's next call into the library;
 *   - versioned: EMSEG_RT_ABI_VERSION changes whenever a signature or a struct layout changes; check
 *     emseg_rt_abi_version() == EMSEG_RT_ABI_VERSION at start-up. Option structs carry their own size.
 *   - a model handle may be used by one thread at a time; distinct handles are independent.
 *
 * Arrays are C-contiguous (row-major):
 *   tiles  (B, 1, T, T) uint8    raw EM intensities (normalisation happens inside the model)
 *   logits (B, K, T, T) float32  per-class logits
 *   labels (B, T, T)    uint8    0 = background, k = class k (1-based, see emseg_rt_class_name)
 *   plane  (H, W)       uint8    one 2D plane of a volume; labels of a plane are (H, W) uint8
 */
#ifndef EMSEG_RT_H
#define EMSEG_RT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define EMSEG_RT_API __declspec(dllimport)
#elif defined(__GNUC__)
#define EMSEG_RT_API __attribute__((visibility("default")))
#else
#define EMSEG_RT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define EMSEG_RT_ABI_VERSION 1

typedef enum emseg_rt_status {
  EMSEG_RT_OK = 0,
  EMSEG_RT_ERROR_INVALID_ARGUMENT = 1, /* a NULL pointer, a size out of range, an unknown option value */
  EMSEG_RT_ERROR_PACKAGE = 2,          /* the model package was refused (manifest, hashes, versions) */
  EMSEG_RT_ERROR_BACKEND = 3,          /* no backend can run this package here, or it failed to load/run */
  EMSEG_RT_ERROR_IO = 4,               /* a file could not be read or written */
  EMSEG_RT_ERROR_OUT_OF_MEMORY = 5,
  EMSEG_RT_ERROR_INTERNAL = 6          /* a bug: please report it with the message */
} emseg_rt_status;

typedef enum emseg_rt_blend {
  EMSEG_RT_BLEND_CENTER = 0,  /* every pixel from the one tile whose core holds it (the runtime's default) */
  EMSEG_RT_BLEND_GAUSSIAN = 1 /* Gaussian-weighted mean of the logits of every tile covering it */
} emseg_rt_blend;

typedef struct emseg_rt_model emseg_rt_model; /* an opened, verified package with a loaded backend */

/* The ABI version this library was built with (compare with EMSEG_RT_ABI_VERSION). */
EMSEG_RT_API uint32_t emseg_rt_abi_version(void);
/* The library's version, e.g. "0.1.0"; static storage. */
EMSEG_RT_API const char* emseg_rt_version(void);
/* The backends compiled into this library, comma-separated (e.g. "aoti" or "aoti,tensorrt"); static storage. */
EMSEG_RT_API const char* emseg_rt_backends(void);
/* The calling thread's last error message ("" when the last call succeeded). */
EMSEG_RT_API const char* emseg_rt_last_error(void);

typedef struct emseg_rt_open_options {
  uint32_t struct_size; /* sizeof(emseg_rt_open_options); set by emseg_rt_open_options_init */
  const char* backend;  /* "auto" (default), "aoti" or "tensorrt" */
  const char* device;   /* "cpu" (default), "cuda" or "cuda:N" */
  int32_t verify_hashes; /* nonzero (default): check the sha256 of every file, as Python's load_package */
  int32_t threads;       /* CPU threads (libtorch: process-wide); 0 (default): the backend's own default */
} emseg_rt_open_options;

/* Fill `options` with the defaults. */
EMSEG_RT_API void emseg_rt_open_options_init(emseg_rt_open_options* options);

/* Open the model package directory `package_dir` (written by `emseg-rt export --aoti`) and load a backend.
 * `options` may be NULL (defaults). On success *model is a handle to free with emseg_rt_close. */
EMSEG_RT_API emseg_rt_status emseg_rt_open(const char* package_dir, const emseg_rt_open_options* options,
                                           emseg_rt_model** model);
/* Free a model and everything it holds; NULL is allowed. */
EMSEG_RT_API void emseg_rt_close(emseg_rt_model* model);

typedef struct emseg_rt_input_spec {
  uint32_t struct_size;  /* sizeof(emseg_rt_input_spec); set it before calling */
  int32_t tile;          /* T: tiles are T x T */
  int32_t channels;      /* input channels (1: grey) */
  int32_t num_classes;   /* K: labels are 0..K */
  int32_t batch_max;     /* the largest batch emseg_rt_segment_tiles accepts */
  int32_t default_halo;  /* the runtime's default halo for planes: tile / 8 */
  float threshold;       /* class merge: label 0 where no logit exceeds it */
  char precision[8];     /* "fp32" or "fp16": what the graph computes in */
  char input_dtype[8];   /* "uint8" */
} emseg_rt_input_spec;

/* The model's input spec. */
EMSEG_RT_API emseg_rt_status emseg_rt_get_input_spec(const emseg_rt_model* model, emseg_rt_input_spec* spec);
/* Name of class `index` (1..K; 0 is "background"), NULL when out of range; valid until emseg_rt_close. */
EMSEG_RT_API const char* emseg_rt_class_name(const emseg_rt_model* model, int32_t index);
/* The model's name (manifest "name") and the backend that runs it ("aoti", "tensorrt"); valid until close. */
EMSEG_RT_API const char* emseg_rt_model_name(const emseg_rt_model* model);
EMSEG_RT_API const char* emseg_rt_backend_name(const emseg_rt_model* model);

/* Segment `batch` tiles (1 <= batch <= batch_max). `tiles` is (batch, 1, T, T) uint8. Either output may be
 * NULL: `logits` (batch, K, T, T) float32, `labels` (batch, T, T) uint8 (the graph's own class merge). */
EMSEG_RT_API emseg_rt_status emseg_rt_segment_tiles(emseg_rt_model* model, const uint8_t* tiles, int32_t batch,
                                                    float* logits, uint8_t* labels);

typedef struct emseg_rt_plane_options {
  uint32_t struct_size; /* sizeof(emseg_rt_plane_options); set by emseg_rt_plane_options_init */
  int32_t halo;         /* context pixels per tile side; -1 (default): tile / 8, as the Python runtime */
  int32_t batch;        /* tiles per backend call (the last call is padded with copies); default 4 */
  int32_t blend;        /* an emseg_rt_blend; default EMSEG_RT_BLEND_CENTER */
} emseg_rt_plane_options;

/* Fill `options` with the defaults (those of emseg_rt.runtime.segment_array). */
EMSEG_RT_API void emseg_rt_plane_options_init(emseg_rt_plane_options* options);

/* Segment one (height, width) uint8 plane into (height, width) uint8 labels, with the Python runtime's tiling
 * (halo, reflect padding at the edges), batching, stitching/blending and class merge. `options` may be NULL. */
EMSEG_RT_API emseg_rt_status emseg_rt_segment_plane(emseg_rt_model* model, const uint8_t* plane, int64_t height,
                                                    int64_t width, const emseg_rt_plane_options* options,
                                                    uint8_t* labels);

#ifdef __cplusplus
}
#endif

#endif /* EMSEG_RT_H */
