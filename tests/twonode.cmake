# Two emulated nodes on this machine (label `twonode`; docs/SLURM.md, "Two emulated nodes"):
# network namespaces made by the tests themselves, each with its own hostname, joined by veth.
#   twonode_mpi:   one sparsering job over TCP across the two nodes (mpirun with a local
#                  remote-launch agent, tests/twonode_rsh.sh), compared with a single-node run.
#   twonode_slurm: the fault tests' single-node Slurm grown to two slurmd nodes, one in each
#                  namespace; `sbatch -N 2 -n 4` of jobs/sparsering.sbatch spans both.
# Need root, iproute2 and (for the second) slurm-wlm + munge: exit 77 (skipped) otherwise.
set(SR_TWONODE_DIR ${CMAKE_CURRENT_BINARY_DIR}/twonode)
set(SR_TWONODE_ENV "${SR_MPI_ENV};MPIEXEC=${SR_MPIEXEC};SR_BIN=$<TARGET_FILE:sparsering_cli>;SR_H5CMP=$<TARGET_FILE:h5cmp>;SR_CMP=$<TARGET_FILE:fault_cmp>")

function(sr_twonode_test name script)
  set(dir ${SR_TWONODE_DIR}/${name})
  file(MAKE_DIRECTORY ${dir})
  add_test(NAME ${name} COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${script} ${ARGN}
           WORKING_DIRECTORY ${dir})
  # Alone on the machine: their daemons and jobs must not compete with other tests (a loaded
  # 2-core machine made Slurm requeue the two-node job).
  set_tests_properties(${name} PROPERTIES TIMEOUT 240 LABELS twonode SKIP_RETURN_CODE 77
                       ENVIRONMENT "${SR_TWONODE_ENV}" RUN_SERIAL TRUE)
endfunction()

sr_twonode_test(twonode_mpi twonode.sh)
sr_twonode_test(twonode_slurm twonode_slurm.sh)
