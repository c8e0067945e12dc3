# Trust in every number: the input is checked while it is read, and a result that fails its own
# verification is a failed run (tests/fault_input.sh, label `fault`). Large-index paths are
# crossed cheaply in test_large (unit).
sr_fault_test(fault_input fault_input.sh)
