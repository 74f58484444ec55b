/* C test of the C ABI (compiled as C99, linked against libemseg_rt only).
 *
 *   test_c_api PACKAGE_DIR [REFUSED_PACKAGE_DIR]
 *
 * Checks the contract of every function on a real package and prints one "ok ..." line per check; exits 1 at
 * the first failed check. With REFUSED_PACKAGE_DIR, the last line is "refused: <message>" (the message the
 * Python loader must give too, compared by tests/test_cpp_host.py).
 */
#include <emseg_rt.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(condition, what)                                                        \
  do {                                                                                \
    if (condition) {                                                                  \
      printf("ok %s\n", what);                                                        \
    } else {                                                                          \
      printf("FAILED %s (last error: %s)\n", what, emseg_rt_last_error());            \
      failures++;                                                                     \
    }                                                                                 \
  } while (0)

/* A smooth, seeded test plane (H, W): blobs of different brightness, like a phantom's organelles. */
static void fill_plane(unsigned char* plane, int height, int width, unsigned seed) {
  int y, x;
  srand(seed);
  for (y = 0; y < height; y++)
    for (x = 0; x < width; x++) {
      double v = 128.0 + 60.0 * sin(x / 9.0) * cos(y / 13.0) + (rand() % 21) - 10;
      plane[y * width + x] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

static int labels_in_range(const unsigned char* labels, size_t count, int classes) {
  size_t i;
  for (i = 0; i < count; i++)
    if (labels[i] > classes) return 0;
  return 1;
}

/* The graph's labels are its class merge of its logits: argmax + 1 where the top logit exceeds the threshold.
 * Pixels whose decision is within `tie` of changing are not counted. */
static double merge_agreement(const float* logits, const unsigned char* labels, int batch, int classes, int tile,
                              float threshold, float tie) {
  size_t pixels = (size_t)tile * tile, agree = 0, decided = 0, b, p;
  int k;
  for (b = 0; b < (size_t)batch; b++)
    for (p = 0; p < pixels; p++) {
      const float* at = logits + b * classes * pixels + p;
      int best = 0;
      float top = at[0], second = -INFINITY, margin;
      for (k = 1; k < classes; k++) {
        float v = at[k * pixels];
        if (v > top) { second = top; top = v; best = k; } else if (v > second) second = v;
      }
      margin = fabsf(top - threshold);
      if (classes > 1 && top - second < margin) margin = top - second;
      if (margin <= tie) continue;
      decided++;
      agree += labels[b * pixels + p] == (top > threshold ? best + 1 : 0);
    }
  return decided ? (double)agree / decided : 0.0;
}

static void check_model(emseg_rt_model* model) {
  emseg_rt_input_spec spec;
  emseg_rt_plane_options options;
  unsigned char *tiles, *labels, *plane, *plane_labels;
  float* logits;
  size_t tile_pixels, i;
  int k, finite = 1, height = 100, width = 150;

  memset(&spec, 0, sizeof spec);
  spec.struct_size = sizeof spec;
  CHECK(emseg_rt_get_input_spec(model, &spec) == EMSEG_RT_OK, "input spec");
  CHECK(spec.tile > 0 && spec.channels == 1 && spec.num_classes > 0 && spec.batch_max >= 2, "input spec values");
  CHECK(strcmp(spec.input_dtype, "uint8") == 0 && spec.default_halo == spec.tile / 8, "input dtype and halo");
  CHECK(strcmp(emseg_rt_class_name(model, 0), "background") == 0, "class 0 is background");
  for (k = 1; k <= spec.num_classes; k++) CHECK(emseg_rt_class_name(model, k) != NULL, "class name");
  CHECK(emseg_rt_class_name(model, spec.num_classes + 1) == NULL, "class name out of range is NULL");
  printf("model %s, backend %s, tile %d, classes %d\n", emseg_rt_model_name(model), emseg_rt_backend_name(model),
         spec.tile, spec.num_classes);

  tile_pixels = (size_t)spec.tile * spec.tile;
  tiles = malloc(2 * tile_pixels);
  labels = malloc(2 * tile_pixels);
  logits = malloc(2 * spec.num_classes * tile_pixels * sizeof(float));
  fill_plane(tiles, 2 * spec.tile, spec.tile, 7u);
  CHECK(emseg_rt_segment_tiles(model, tiles, 2, logits, labels) == EMSEG_RT_OK, "segment 2 tiles");
  for (i = 0; i < 2 * spec.num_classes * tile_pixels; i++) finite = finite && isfinite(logits[i]);
  CHECK(finite, "logits finite");
  CHECK(labels_in_range(labels, 2 * tile_pixels, spec.num_classes), "tile labels in 0..K");
  CHECK(merge_agreement(logits, labels, 2, spec.num_classes, spec.tile, spec.threshold, 1e-4f) == 1.0,
        "tile labels are the class merge of the logits");
  CHECK(emseg_rt_segment_tiles(model, tiles, 1, NULL, labels) == EMSEG_RT_OK, "segment 1 tile, labels only");
  CHECK(emseg_rt_segment_tiles(model, tiles, spec.batch_max + 1, NULL, labels) == EMSEG_RT_ERROR_INVALID_ARGUMENT &&
            strstr(emseg_rt_last_error(), "batch") != NULL,
        "batch above batch_max refused");
  CHECK(emseg_rt_segment_tiles(model, NULL, 1, NULL, labels) == EMSEG_RT_ERROR_INVALID_ARGUMENT, "NULL tiles refused");

  plane = malloc((size_t)height * width);
  plane_labels = malloc((size_t)height * width);
  fill_plane(plane, height, width, 11u);
  emseg_rt_plane_options_init(&options);
  CHECK(emseg_rt_segment_plane(model, plane, height, width, NULL, plane_labels) == EMSEG_RT_OK, "segment a plane");
  CHECK(strcmp(emseg_rt_last_error(), "") == 0, "last error cleared on success");
  CHECK(labels_in_range(plane_labels, (size_t)height * width, spec.num_classes), "plane labels in 0..K");
  options.blend = EMSEG_RT_BLEND_GAUSSIAN;
  CHECK(emseg_rt_segment_plane(model, plane, height, width, &options, plane_labels) == EMSEG_RT_OK,
        "segment a plane, gaussian blending");
  options.halo = spec.tile / 2;
  CHECK(emseg_rt_segment_plane(model, plane, height, width, &options, plane_labels) == EMSEG_RT_ERROR_INVALID_ARGUMENT &&
            strstr(emseg_rt_last_error(), "--halo") != NULL,
        "halo of half a tile refused");
  CHECK(emseg_rt_segment_plane(model, plane, 0, width, NULL, plane_labels) == EMSEG_RT_ERROR_INVALID_ARGUMENT,
        "empty plane refused");
  free(tiles);
  free(labels);
  free(logits);
  free(plane);
  free(plane_labels);
}

int main(int argc, char** argv) {
  emseg_rt_model* model = NULL;
  emseg_rt_open_options options;
  if (argc < 2) {
    fprintf(stderr, "usage: test_c_api PACKAGE_DIR [REFUSED_PACKAGE_DIR]\n");
    return 2;
  }
  CHECK(emseg_rt_abi_version() == EMSEG_RT_ABI_VERSION, "ABI version");
  CHECK(strstr(emseg_rt_backends(), "aoti") != NULL, "AOTInductor backend compiled in");
  CHECK(emseg_rt_open(NULL, NULL, &model) == EMSEG_RT_ERROR_INVALID_ARGUMENT && model == NULL, "NULL path refused");
  CHECK(strlen(emseg_rt_last_error()) > 0, "last error set");
  CHECK(emseg_rt_open("/nonexistent/package", NULL, &model) == EMSEG_RT_ERROR_PACKAGE &&
            strcmp(emseg_rt_last_error(), "package /nonexistent/package: no such directory") == 0,
        "missing package refused with Python's message");
  emseg_rt_open_options_init(&options);
  options.threads = 1;
  options.backend = "no-such-backend";
  CHECK(emseg_rt_open(argv[1], &options, &model) == EMSEG_RT_ERROR_INVALID_ARGUMENT, "unknown backend refused");
  options.backend = "aoti";
  CHECK(emseg_rt_open(argv[1], &options, &model) == EMSEG_RT_OK && model != NULL, "open the package");
  if (model != NULL) check_model(model);
  emseg_rt_close(model);
  emseg_rt_close(NULL);
  if (argc > 2) {
    model = NULL;
    CHECK(emseg_rt_open(argv[2], &options, &model) == EMSEG_RT_ERROR_PACKAGE && model == NULL, "corrupt package refused");
    printf("refused: %s\n", emseg_rt_last_error());
  }
  return failures ? 1 : 0;
}
