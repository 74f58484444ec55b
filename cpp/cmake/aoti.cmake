# AOTInductor backend: src/backends/aoti.cpp, the only source compiled against the torch headers, linked with
# libtorch from the torch wheel (its include/ and lib/; no find_package(Torch), which wants a CUDA toolkit for
# the CUDA wheels). The torch version (torch/version.py) is compiled in: a .pt2 runs only with the torch that
# compiled it (emseg_rt/export/aoti.py).
if(NOT EMSEG_RT_WITH_AOTI)
  message(STATUS "emseg_rt: AOTInductor backend OFF (EMSEG_RT_WITH_AOTI)")
  return()
endif()
if(NOT EMSEG_RT_TORCH_ROOT)
  find_package(Python3 COMPONENTS Interpreter)
  if(Python3_Interpreter_FOUND)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "import os, torch; print(os.path.dirname(torch.__file__))"
      OUTPUT_VARIABLE _torch_root OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    set(EMSEG_RT_TORCH_ROOT "${_torch_root}" CACHE PATH "the torch package directory" FORCE)
  endif()
endif()
if(NOT EXISTS "${EMSEG_RT_TORCH_ROOT}/include/torch/csrc/inductor/aoti_package/model_package_loader.h")
  message(FATAL_ERROR "emseg_rt: no torch wheel with AOTInductor headers at '${EMSEG_RT_TORCH_ROOT}'; pass "
    "-DEMSEG_RT_TORCH_ROOT=$(python -c 'import torch; print(torch.__path__[0])') or -DEMSEG_RT_WITH_AOTI=OFF")
endif()
file(STRINGS "${EMSEG_RT_TORCH_ROOT}/version.py" _torch_version_line REGEX "^__version__")
string(REGEX REPLACE "^__version__[^'\"]*['\"]([^'\"]+)['\"].*" "\\1" EMSEG_RT_TORCH_VERSION "${_torch_version_line}")
message(STATUS "emseg_rt: AOTInductor backend ON (torch ${EMSEG_RT_TORCH_VERSION} at ${EMSEG_RT_TORCH_ROOT})")

target_sources(emseg_rt PRIVATE src/backends/aoti.cpp)
# -O1: this one file pulls in the ATen headers; -O1 compiles it much faster and it only forwards to libtorch.
set_source_files_properties(src/backends/aoti.cpp PROPERTIES
  INCLUDE_DIRECTORIES "${EMSEG_RT_TORCH_ROOT}/include;${EMSEG_RT_TORCH_ROOT}/include/torch/csrc/api/include"
  COMPILE_DEFINITIONS "EMSEG_RT_TORCH_VERSION=\"${EMSEG_RT_TORCH_VERSION}\""
  COMPILE_OPTIONS "-O1;-w")
target_compile_definitions(emseg_rt PRIVATE EMSEG_RT_WITH_AOTI)
set(_torch_lib "${EMSEG_RT_TORCH_ROOT}/lib")
target_link_libraries(emseg_rt PRIVATE "-Wl,--no-as-needed" "${_torch_lib}/libtorch.so" "${_torch_lib}/libtorch_cpu.so"
  "${_torch_lib}/libc10.so" "-Wl,--as-needed")
set_property(TARGET emseg_rt APPEND PROPERTY BUILD_RPATH "${_torch_lib}")
set_property(TARGET emseg_rt APPEND PROPERTY INSTALL_RPATH "${_torch_lib}")
