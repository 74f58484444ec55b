#include "sha256.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "error.hpp"

namespace emseg_rt {
namespace {

struct DigestContext {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  DigestContext() {
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1)
      throw Error(EMSEG_RT_ERROR_INTERNAL, "OpenSSL: cannot start a sha256 digest");
  }
  ~DigestContext() { EVP_MD_CTX_free(ctx); }
  void update(const void* data, size_t size) { EVP_DigestUpdate(ctx, data, size); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx, digest, &length);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
      out += digits[digest[i] >> 4];
      out += digits[digest[i] & 15];
    }
    return out;
  }
};

}  // namespace

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw Error(EMSEG_RT_ERROR_IO, "cannot read " + path);
  DigestContext digest;
  std::vector<unsigned char> block(1 << 22);
  size_t got = 0;
  while ((got = std::fread(block.data(), 1, block.size(), file.get())) > 0) digest.update(block.data(), got);
  if (std::ferror(file.get())) throw Error(EMSEG_RT_ERROR_IO, "cannot read " + path);
  return digest.hex();
}

std::string sha256_bytes(const std::string& data) {
  DigestContext digest;
  digest.update(data.data(), data.size());
  return digest.hex();
}

}  // namespace emseg_rt
