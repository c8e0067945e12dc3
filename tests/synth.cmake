# Synthetic input and the float64 verifier: generator determinism and dialable structure,
# exact / perturbed / partial-selection / missed-needle verification, rank-count independence.
sr_unit_test(test_synth_verify SOURCES test_synth_verify.c LABELS synth)
# The calibrated profile and the inspector: references for sr_inspect (hand-built rows, full
# sorts, simulated ranks, an HDF5 dump), head types, exact logits, and the fit to the goals of
# docs/SYNTHETIC.md at 16K and 64K (head_dim 64) and at 1M (head_dim 128, few rows).
sr_unit_test(test_synth_calib SOURCES test_synth_calib.c LABELS synth TIMEOUT 180)
set_tests_properties(test_synth_calib PROPERTIES ENVIRONMENT "${SR_MPI_ENV};OMP_NUM_THREADS=2")
