# HDF5 tests: sr_h5 output (rows, selection CSR, attributes, partial/rename protocol, refusal of
# an existing output) and input (validation messages, float16 / bfloat16 / big-endian reads),
# each on 1, 2 and 3 ranks (zigzag splits, a rank without rows, rank-local failures).
add_executable(test_h5 test_h5.c)
target_link_libraries(test_h5 PRIVATE sparsering PkgConfig::CMOCKA)
target_include_directories(test_h5 PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
foreach(n 1 2 3)
  sr_mpi_test(test_h5_np${n} NP ${n} COMMAND $<TARGET_FILE:test_h5> LABELS h5)
endforeach()
