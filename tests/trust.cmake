# Trust in every number: the input is checked while it is read, and a result that fails its own
# verification is a failed run (tests/fault_input.sh, label `fault`). Large-index paths are
# crossed cheaply in test_large (unit).
sr_fault_test(fault_input fault_input.sh)
# The CPU attention kernel past 2^24 query rows and 2^31 / 2^32 element offsets into the K/V
# pools (test_large.c): 16 GiB MAP_NORESERVE pools, ~0.65 GB resident, seconds. Skipped (77)
# where the reservation is refused.
sr_unit_test(test_large SOURCES test_large.c LABELS trust TIMEOUT 300)
