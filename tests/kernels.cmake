# CPU backend kernels against float64 references (attention, merge, pooling, scores, top-k).
sr_unit_test(test_kernels SOURCES test_kernels.c LABELS kernels TIMEOUT 60)
# Every kernel path the machine has (avx512, avx2 + fma, portable) against the same references;
# a path this CPU lacks reports skipped.
foreach(path avx512 avx2 portable)
  add_test(NAME test_kernels_${path} COMMAND test_kernels)
  set_tests_properties(test_kernels_${path} PROPERTIES TIMEOUT 60 LABELS "unit;kernels"
                       ENVIRONMENT "${SR_MPI_ENV};SR_CPU_PATH=${path}" SKIP_RETURN_CODE 77)
endforeach()
