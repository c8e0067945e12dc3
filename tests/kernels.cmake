# CPU backend kernels against float64 references (attention, merge, pooling, scores, top-k).
sr_unit_test(test_kernels SOURCES test_kernels.c LABELS kernels TIMEOUT 60)
