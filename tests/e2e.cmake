# End to end through the CLI: the same run on 1, 2, 3 and 4 ranks must give the same selection
# and the same output (<= 1e-6 relative), in both exchange modes; the files must be complete
# HDF5 that h5dump reads; a dense run must match the exact reference (verify, all rows).
add_executable(h5cmp h5cmp.c)
target_link_libraries(h5cmp PRIVATE HDF5::HDF5 MPI::MPI_C m)

set(SR_E2E_DIR ${CMAKE_CURRENT_BINARY_DIR}/e2e)
file(MAKE_DIRECTORY ${SR_E2E_DIR})
set(SR_E2E_ARGS -q -f --set seq_len=3072 --set model.layers=2 --set model.q_heads=4
    --set model.kv_heads=2 --set attention.block_q=16 --set attention.block_k=16
    --set attention.sparsity=0.8 --set verify.rows=8)

foreach(mode selected dense_ring)
  foreach(np 1 2 3 4)
    sr_mpi_test(e2e_${mode}_np${np} NP ${np}
                COMMAND $<TARGET_FILE:sparsering_cli> ${SR_E2E_ARGS} --set exchange=${mode}
                        -o ${SR_E2E_DIR}/${mode}_np${np}.h5 LABELS e2e)
    set_tests_properties(e2e_${mode}_np${np} PROPERTIES FIXTURES_SETUP e2e_${mode})
  endforeach()
  foreach(np 2 3 4)
    add_test(NAME e2e_${mode}_agree_np${np}
             COMMAND h5cmp ${SR_E2E_DIR}/${mode}_np1.h5 ${SR_E2E_DIR}/${mode}_np${np}.h5 2 1e-6)
    set_tests_properties(e2e_${mode}_agree_np${np} PROPERTIES FIXTURES_REQUIRED e2e_${mode} LABELS e2e)
  endforeach()
endforeach()
# The runtime's device-list path (work lists made by the backend's attn_lists; what a CUDA run
# takes) on CPU ranks: SR_CPU_ATTN_LISTS=1 gives the CPU backend a host attn_lists. Same
# entries in the same order as the host split, so the files must be identical (tolerance 0):
# Block-Sparse (ids kept by topk_rows) in both modes on 1..4 ranks, and dense (row pointers
# only) on 2 and 4.
foreach(mode selected dense_ring)
  foreach(np 1 2 3 4)
    sr_mpi_test(e2e_lists_${mode}_np${np} NP ${np}
                COMMAND $<TARGET_FILE:sparsering_cli> ${SR_E2E_ARGS} --set exchange=${mode}
                        -o ${SR_E2E_DIR}/lists_${mode}_np${np}.h5 LABELS e2e)
    set_tests_properties(e2e_lists_${mode}_np${np} PROPERTIES FIXTURES_SETUP e2e_lists_${mode}
                         ENVIRONMENT "${SR_MPI_ENV};SR_CPU_ATTN_LISTS=1")
    add_test(NAME e2e_lists_${mode}_same_np${np}
             COMMAND h5cmp ${SR_E2E_DIR}/${mode}_np${np}.h5 ${SR_E2E_DIR}/lists_${mode}_np${np}.h5 2 0)
    set_tests_properties(e2e_lists_${mode}_same_np${np} PROPERTIES
                         FIXTURES_REQUIRED "e2e_${mode};e2e_lists_${mode}" LABELS e2e)
  endforeach()
endforeach()
foreach(np 2 4)
  foreach(lists 0 1)
    sr_mpi_test(e2e_lists_dense_np${np}_${lists} NP ${np}
                COMMAND $<TARGET_FILE:sparsering_cli> ${SR_E2E_ARGS} --set attention.method=dense
                        -o ${SR_E2E_DIR}/lists_dense_np${np}_${lists}.h5 LABELS e2e)
    set_tests_properties(e2e_lists_dense_np${np}_${lists} PROPERTIES FIXTURES_SETUP e2e_lists_dense
                         ENVIRONMENT "${SR_MPI_ENV};SR_CPU_ATTN_LISTS=${lists}")
  endforeach()
  add_test(NAME e2e_lists_dense_same_np${np}
           COMMAND h5cmp ${SR_E2E_DIR}/lists_dense_np${np}_0.h5 ${SR_E2E_DIR}/lists_dense_np${np}_1.h5 2 0)
  set_tests_properties(e2e_lists_dense_same_np${np} PROPERTIES FIXTURES_REQUIRED e2e_lists_dense
                       LABELS e2e)
endforeach()
add_test(NAME e2e_modes_agree COMMAND h5cmp ${SR_E2E_DIR}/selected_np3.h5 ${SR_E2E_DIR}/dense_ring_np3.h5 2 1e-6)
set_tests_properties(e2e_modes_agree PROPERTIES FIXTURES_REQUIRED "e2e_selected;e2e_dense_ring" LABELS e2e)

find_program(SR_H5DUMP h5dump)
if(SR_H5DUMP)
  add_test(NAME e2e_h5dump COMMAND ${SR_H5DUMP} -H ${SR_E2E_DIR}/selected_np2.h5)
  set_tests_properties(e2e_h5dump PROPERTIES FIXTURES_REQUIRED e2e_selected LABELS e2e
                       PASS_REGULAR_EXPRESSION "DATASET \"out\".*DATASET \"indices\"")
endif()

# A valid HDF5 file that is not an input (no /layers/0/q): a shape error naming the dataset.
sr_error_test(wrong_shape_input EXIT 3 REGEX "/layers/0/q" NP 2
              ARGS ${SR_SMALL} --set input.source=hdf5 --set input.path=${SR_E2E_DIR}/selected_np2.h5)
set_tests_properties(err_wrong_shape_input PROPERTIES FIXTURES_REQUIRED e2e_selected)

# Dense attention through the whole CLI equals the exact float64 reference on every row.
sr_mpi_test(e2e_dense_exact NP 3
            COMMAND $<TARGET_FILE:sparsering_cli> -q --set seq_len=1536 --set attention.method=dense
                    --set verify.rows=-1 --set report.json=${SR_E2E_DIR}/dense.json LABELS e2e)
add_test(NAME e2e_dense_exact_check
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_json.sh ${SR_E2E_DIR}/dense.json relerr_max 1e-5)
set_tests_properties(e2e_dense_exact PROPERTIES FIXTURES_SETUP e2e_dense)
set_tests_properties(e2e_dense_exact_check PROPERTIES FIXTURES_REQUIRED e2e_dense LABELS e2e)
# The report's phase times hang together (attention = each rank's plan + ring, download apart).
add_test(NAME e2e_report_times COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_times.sh ${SR_E2E_DIR}/dense.json)
set_tests_properties(e2e_report_times PROPERTIES FIXTURES_REQUIRED e2e_dense LABELS e2e)

# Threads follow the launcher's binding: a rank held to one CPU (taskset, as mpirun's default
# binding of <= 2 ranks does) runs one thread and says why. Skipped on a one-CPU machine.
find_program(SR_TASKSET taskset)
if(SR_TASKSET)
  add_test(NAME e2e_threads_follow_binding
           COMMAND bash -c "[ $(getconf _NPROCESSORS_ONLN) -ge 2 ] || exit 77; exec ${SR_TASKSET} -c 0 ${SR_MPIEXEC} --bind-to none -n 1 $<TARGET_FILE:sparsering_cli> run --set seq_len=1024 --set verify.rows=0 --set output.path=")
  set_tests_properties(e2e_threads_follow_binding PROPERTIES LABELS e2e SKIP_RETURN_CODE 77
                       ENVIRONMENT "${SR_MPI_ENV}"
                       PASS_REGULAR_EXPRESSION "bound to 1 CPU by the launcher: 1 thread per rank.*ranks 1, backend cpu, transport mpi, 1 thread per rank")
endif()

# Every preset in configs/ parses and validates.
file(GLOB SR_PRESETS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/configs/*.yaml)
foreach(preset ${SR_PRESETS})
  get_filename_component(pname ${preset} NAME_WLE)
  add_test(NAME config_preset_${pname} COMMAND $<TARGET_FILE:sparsering_cli> config -c ${preset})
  set_tests_properties(config_preset_${pname} PROPERTIES LABELS config ENVIRONMENT "${SR_MPI_ENV}"
                       PASS_REGULAR_EXPRESSION "seq_len:")
endforeach()

# Vertical-Slash and FlexPrefill (global estimate, tiles + key columns): the selection is
# identical and the output agrees on 1..4 ranks and with either shard scheme.
set(SR_E2E_VS_ARGS -q -f --set seq_len=3072 --set model.layers=1 --set model.q_heads=4
    --set model.kv_heads=2 --set attention.block_q=16 --set attention.block_k=16
    --set attention.last_q=128 --set attention.verticals=48 --set attention.slashes=96
    --set attention.alpha=0.3 --set attention.min_budget=64 --set verify.rows=8)
foreach(method vertical_slash flexprefill)
  foreach(shard zigzag contiguous)
    foreach(np 1 2 3 4)
      sr_mpi_test(e2e_${method}_${shard}_np${np} NP ${np}
                  COMMAND $<TARGET_FILE:sparsering_cli> ${SR_E2E_VS_ARGS} --set attention.method=${method}
                          --set shard=${shard} -o ${SR_E2E_DIR}/${method}_${shard}_np${np}.h5 LABELS e2e)
      set_tests_properties(e2e_${method}_${shard}_np${np} PROPERTIES FIXTURES_SETUP e2e_${method})
      if(NOT (np EQUAL 1 AND shard STREQUAL "zigzag"))
        add_test(NAME e2e_${method}_${shard}_agree_np${np}
                 COMMAND h5cmp ${SR_E2E_DIR}/${method}_zigzag_np1.h5
                         ${SR_E2E_DIR}/${method}_${shard}_np${np}.h5 1 1e-6)
        set_tests_properties(e2e_${method}_${shard}_agree_np${np} PROPERTIES
                             FIXTURES_REQUIRED e2e_${method} LABELS e2e)
      endif()
    endforeach()
  endforeach()
endforeach()
