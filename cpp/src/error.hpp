// The library's one exception type: a status code of the C ABI and a one-line message. It never crosses
// the C boundary: c_api.cpp turns it into the status and the thread-local last-error text.
#pragma once

#include <stdexcept>
#include <string>

#include "emseg_rt.h"

namespace emseg_rt {

struct Error : std::runtime_error {
  emseg_rt_status status;
  Error(emseg_rt_status code, const std::string& message) : std::runtime_error(message), status(code) {}
};

}  // namespace emseg_rt
