# Vertical-Slash and FlexPrefill rules (runtime/methods/sr_vs.h): topk, cover, pick, index
# conversion, selection rows, the estimate against a float64 reference, FlexPrefill budgets and
# Table 3 in one process; the same binary with "mpi" checks that the estimate and selection are
# bit-identical to a 1-rank run on 1..4 ranks, both shard schemes.
sr_unit_test(test_vs SOURCES test_vs.c LABELS methods TIMEOUT 120)
foreach(np 1 2 3 4)
  sr_mpi_test(test_vs_mpi_np${np} NP ${np} COMMAND $<TARGET_FILE:test_vs> mpi LABELS methods)
endforeach()
