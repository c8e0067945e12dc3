# Synthetic input and the float64 verifier: generator determinism and dialable structure,
# exact / perturbed / partial-selection / missed-needle verification, rank-count independence.
sr_unit_test(test_synth_verify SOURCES test_synth_verify.c LABELS synth)
