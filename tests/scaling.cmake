# Scaling sweeps (docs/SCALING.md): a short jobs/scaling.sh run (ranks 1 2, tiny N, two
# repetitions) into the build directory, then the columns and rows of its sweep.csv and the
# metadata of sweep.json (bench/scaling/aggregate.py, Python standard library only).
find_program(SR_PYTHON3 python3)
if(SR_PYTHON3)
  add_test(NAME scaling_sweep
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/scaling_sweep.sh $<TARGET_FILE:sparsering_cli>
                   ${CMAKE_CURRENT_BINARY_DIR}/scaling/sweep)
  set_tests_properties(scaling_sweep PROPERTIES TIMEOUT 90 LABELS scaling
                       ENVIRONMENT "${SR_MPI_ENV};SPARSERING_MPIRUN=${SR_MPIEXEC}")
endif()
