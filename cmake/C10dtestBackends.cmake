# What c10dtest's comm layer compiles against, worked out after find_package(Torch):
#
#   C10DTEST_GLOO_INCLUDE_DIR  directory holding gloo/algorithm.h and gloo/config.h. Searched in
#                              LibTorch's own include directories, then the system's (Debian's
#                              libgloo-dev). LibTorch 2.x pip wheels ship none: point it at a gloo
#                              install, Debian's headers, or a configured gloo checkout.
#   C10DTEST_WITH_NCCL         AUTO (default): the NCCL backend is compiled in when this LibTorch
#                              has it (torch_cuda exports USE_C10D_NCCL) and nccl.h is found.
#                              ON: fail at configure time unless both hold. OFF: never.
#   C10DTEST_NCCL_INCLUDE_DIR  directory holding nccl.h (searched in LibTorch's and CUDA's include
#                              directories, $NCCL_INCLUDE_DIR and $NCCL_ROOT/include).
#
# Sets c10dtest_torch_has_nccl, c10dtest_with_nccl and c10dtest_torch_has_cuda, and prints one
# summary line.

# --- Gloo headers ---------------------------------------------------------------------------
# An empty value (older c10dtest caches had one) means "search".
if(DEFINED CACHE{C10DTEST_GLOO_INCLUDE_DIR} AND "${C10DTEST_GLOO_INCLUDE_DIR}" STREQUAL "")
  unset(C10DTEST_GLOO_INCLUDE_DIR CACHE)
endif()
find_path(C10DTEST_GLOO_INCLUDE_DIR gloo/algorithm.h
  HINTS ${TORCH_INCLUDE_DIRS} ENV C10DTEST_GLOO_INCLUDE_DIR
  DOC "Directory holding gloo/ headers (LibTorch 2.x wheels ship none; Debian's libgloo-dev works)")
set(_c10dtest_gloo_fix
  "Install Debian's libgloo-dev (headers in /usr/include/gloo), or configure with "
  "-DC10DTEST_GLOO_INCLUDE_DIR=<dir> where <dir>/gloo/algorithm.h exists: a gloo install's "
  "include directory, or a gloo checkout configured once with cmake (that writes "
  "gloo/config.h in its build directory: copy it next to gloo/algorithm.h). Use the gloo "
  "commit your LibTorch was built from (pytorch's third_party/gloo) when you can.")
if(NOT C10DTEST_GLOO_INCLUDE_DIR)
  string(CONCAT _msg
    "c10dtest: no gloo headers found. ProcessGroupGloo.hpp of LibTorch ${Torch_VERSION} "
    "(${Torch_DIR}) includes <gloo/algorithm.h>, and this LibTorch ships none (pip wheels of "
    "torch 2.x never do). " ${_c10dtest_gloo_fix})
  message(FATAL_ERROR "${_msg}")
endif()
foreach(_h gloo/algorithm.h gloo/config.h)
  if(NOT EXISTS "${C10DTEST_GLOO_INCLUDE_DIR}/${_h}")
    string(CONCAT _msg "c10dtest: C10DTEST_GLOO_INCLUDE_DIR=${C10DTEST_GLOO_INCLUDE_DIR} has "
      "no ${_h}. " ${_c10dtest_gloo_fix})
    message(FATAL_ERROR "${_msg}")
  endif()
endforeach()

# --- CUDA and NCCL in this LibTorch ---------------------------------------------------------
set(c10dtest_torch_has_cuda OFF)
set(c10dtest_torch_has_nccl OFF)
if(TARGET torch_cuda)
  set(c10dtest_torch_has_cuda ON)
  get_target_property(_defs torch_cuda INTERFACE_COMPILE_DEFINITIONS)
  if(_defs MATCHES "USE_C10D_NCCL")
    set(c10dtest_torch_has_nccl ON)
  endif()
endif()

set(C10DTEST_WITH_NCCL AUTO CACHE STRING "Compile the NCCL backend in: AUTO, ON or OFF")
set_property(CACHE C10DTEST_WITH_NCCL PROPERTY STRINGS AUTO ON OFF)
set(c10dtest_with_nccl OFF)
set(_nccl_note "")
if(NOT C10DTEST_WITH_NCCL STREQUAL "OFF")
  if(c10dtest_torch_has_nccl)
    set(_cuda_hints "")
    if(DEFINED CUDAToolkit_INCLUDE_DIRS)
      list(APPEND _cuda_hints ${CUDAToolkit_INCLUDE_DIRS})
    endif()
    if(DEFINED CUDA_INCLUDE_DIRS)
      list(APPEND _cuda_hints ${CUDA_INCLUDE_DIRS})
    endif()
    find_path(C10DTEST_NCCL_INCLUDE_DIR nccl.h
      HINTS ${TORCH_INCLUDE_DIRS} ${_cuda_hints} ENV NCCL_INCLUDE_DIR
      PATHS ENV NCCL_ROOT PATH_SUFFIXES include
      DOC "Directory holding nccl.h (pip: the nvidia.nccl package's include directory)")
    if(C10DTEST_NCCL_INCLUDE_DIR)
      set(c10dtest_with_nccl ON)
    else()
      set(_nccl_note " (LibTorch has NCCL, but nccl.h was not found: set "
                     "C10DTEST_NCCL_INCLUDE_DIR; with a pip torch, the include directory of the "
                     "nvidia.nccl package)")
      string(CONCAT _nccl_note ${_nccl_note})
    endif()
  elseif(c10dtest_torch_has_cuda)
    set(_nccl_note " (this CUDA LibTorch was built without NCCL)")
  else()
    set(_nccl_note " (CPU-only LibTorch)")
  endif()
  if(C10DTEST_WITH_NCCL STREQUAL "ON" AND NOT c10dtest_with_nccl)
    message(FATAL_ERROR "c10dtest: C10DTEST_WITH_NCCL=ON, but NCCL cannot be compiled in"
                        "${_nccl_note}")
  endif()
else()
  set(_nccl_note " (C10DTEST_WITH_NCCL=OFF)")
endif()

message(STATUS "c10dtest: LibTorch ${Torch_VERSION} (${Torch_DIR}); gloo headers: "
               "${C10DTEST_GLOO_INCLUDE_DIR}; CUDA: ${c10dtest_torch_has_cuda}; "
               "NCCL backend: ${c10dtest_with_nccl}${_nccl_note}")
