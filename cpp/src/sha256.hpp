// SHA-256 of a file, through OpenSSL's libcrypto (EVP; present and linkable on these machines).
#pragma once

#include <string>

namespace emseg_rt {

// Lower-case hex sha256 of the file at `path`, read in 4 MiB chunks (as emseg_rt.package.sha256_file);
// throws Error(EMSEG_RT_ERROR_IO) when it cannot be read.
std::string sha256_file(const std::string& path);
// Lower-case hex sha256 of `data`.
std::string sha256_bytes(const std::string& data);

}  // namespace emseg_rt
