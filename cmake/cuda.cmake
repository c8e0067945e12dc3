# CUDA backend and NCCL transport (SR_CUDA). Included from the top CMakeLists.txt after the
# sparsering target exists. On a machine with nvcc but no GPU (CI) everything compiles and
# links; GPU tests then report "skipped" (exit 77).
#   kernels/cuda/*.cu   CUDA backend (sr_backend_cuda), C-style CUDA
#   comm/cuda/*.c       NCCL transport (sr_transport_nccl_create), host C
include(CheckLanguage)
check_language(CUDA)
file(GLOB SR_CUDA_PRESENT ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cu)
file(GLOB SR_NCCL_PRESENT ${CMAKE_CURRENT_SOURCE_DIR}/comm/cuda/*.c)
if(NOT DEFINED SR_CUDA)
  if(CMAKE_CUDA_COMPILER AND SR_CUDA_PRESENT AND SR_NCCL_PRESENT)
    set(SR_CUDA_DEFAULT ON)
  else()
    set(SR_CUDA_DEFAULT OFF)
  endif()
  option(SR_CUDA "Build the CUDA backend and the NCCL transport" ${SR_CUDA_DEFAULT})
endif()
if(NOT SR_CUDA)
  return()
endif()
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "SR_CUDA=ON but no CUDA compiler (nvcc) was found")
endif()
if(NOT CMAKE_CUDA_ARCHITECTURES)
  # H100 / H200; `native` fails where no GPU is present. 90a (not 90) holds the wgmma attention
  # kernel; a plain 90 build runs the mma.sync kernel instead (docs/GPU.md).
  set(CMAKE_CUDA_ARCHITECTURES 90a)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS})
find_library(NCCL_LIBRARY nccl HINTS ${NCCL_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR})
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  message(FATAL_ERROR "SR_CUDA=ON but NCCL was not found (set NCCL_ROOT)")
endif()
add_library(sr_nccl UNKNOWN IMPORTED)
set_target_properties(sr_nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                      INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})

file(GLOB SR_CUDA_SOURCES CONFIGURE_DEPENDS
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/comm/cuda/*.c)
target_sources(sparsering PRIVATE ${SR_CUDA_SOURCES})
target_include_directories(sparsering PUBLIC kernels/cuda comm/cuda)
target_compile_definitions(sparsering PUBLIC SR_CUDA=1)
target_link_libraries(sparsering PUBLIC CUDA::cudart sr_nccl)
# The library target exists before CUDA is enabled, so it did not inherit the architectures.
set_target_properties(sparsering PROPERTIES CUDA_SEPARABLE_COMPILATION OFF CUDA_STANDARD 17
                      CUDA_STANDARD_REQUIRED ON CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
# The GPU attention benchmark (bench/gpu): C host code timing the backend with CUDA events.
if(SR_BUILD_BENCH)
  add_subdirectory(${CMAKE_CURRENT_SOURCE_DIR}/bench/gpu ${CMAKE_CURRENT_BINARY_DIR}/bench_gpu)
endif()
# Host compiler flags for .cu files: the project's -march/-Wall options are C-only.
message(STATUS "sparsering: CUDA backend ON (arch ${CMAKE_CUDA_ARCHITECTURES}), NCCL ${NCCL_LIBRARY}")
