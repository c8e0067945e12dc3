# Fault tests (label `fault`; docs/CHECKPOINT.md): the checkpoint under kill -9 at named and
# random points, signals, damaged files, a full disk, the Slurm requeue script (with a stand-in
# scontrol, and under a real Slurm), and the resume rules; plus the checkpoint's parsers and
# the fuzz targets' corpora. Each shell driver runs
# the real CLI under mpirun on 2 ranks in its own directory with a time limit on every run; the
# whole set takes about two minutes on 2 cores (ctest -j2).
add_executable(fault_cmp fault_cmp.c)
target_link_libraries(fault_cmp PRIVATE HDF5::HDF5 MPI::MPI_C)

sr_unit_test(fault_unit SOURCES fault_unit.c LABELS fault TIMEOUT 60)

set(SR_FAULT_DIR ${CMAKE_CURRENT_BINARY_DIR}/fault)
set(SR_FAULT_ENV "${SR_MPI_ENV};MPIEXEC=${SR_MPIEXEC};SR_BIN=$<TARGET_FILE:sparsering_cli>;SR_CMP=$<TARGET_FILE:fault_cmp>")

# sr_fault_test(name script [args...]): tests/<script> in build/tests/fault/<name>/.
function(sr_fault_test name script)
  set(dir ${SR_FAULT_DIR}/${name})
  file(MAKE_DIRECTORY ${dir})
  add_test(NAME ${name} COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${script} ${ARGN}
           WORKING_DIRECTORY ${dir})
  set_tests_properties(${name} PROPERTIES TIMEOUT 240 LABELS fault SKIP_RETURN_CODE 77
                       ENVIRONMENT "${SR_FAULT_ENV}")
endfunction()

sr_fault_test(fault_crash_points fault_crash.sh)
sr_fault_test(fault_kill_all fault_kill.sh all 4)
sr_fault_test(fault_kill_one fault_kill.sh one 4)
sr_fault_test(fault_corrupt fault_corrupt.sh)
# vertical_slash: the key-column datasets are checkpointed and verified like indptr / indices.
sr_fault_test(fault_columns fault_columns.sh)
sr_fault_test(fault_resume_rules fault_resume.sh)
sr_fault_test(fault_signals fault_signal.sh)
sr_fault_test(fault_disk_full fault_disk_full.sh)
sr_fault_test(fault_requeue_script fault_requeue.sh)
# A real single-node Slurm (own munged/slurmctld/slurmd, stopped at the end): skipped (77)
# where slurm-wlm and munge are not installed or not root.
sr_fault_test(fault_slurm_requeue fault_slurm.sh)

# The fuzz targets (tests/fuzz/) built with the normal compiler around a replay main, run over
# their corpora: every entry must pass in every build, the sanitizer build included. The
# libFuzzer builds themselves (clang) are tests/fuzz/run.sh, run by .ci/run.
foreach(target config h5_input ckpt)
  add_executable(fuzz_${target}_replay fuzz/fuzz_${target}.c fuzz/replay.c)
  target_link_libraries(fuzz_${target}_replay PRIVATE sparsering)
  add_test(NAME fuzz_corpus_${target}
           COMMAND fuzz_${target}_replay ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${target})
  set_tests_properties(fuzz_corpus_${target} PROPERTIES TIMEOUT 120 LABELS "fault;fuzz"
                       ENVIRONMENT "${SR_MPI_ENV}" PASS_REGULAR_EXPRESSION "no crash")
endforeach()
