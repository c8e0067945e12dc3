# Decode end to end through the CLI (attention.phase: decode, runtime/decode/sr_decode.h), CPU
# backend: the same decode run on 1, 2, 3 and 4 ranks must give identical selections (Quest's
# pages per step, SnapKV's kept tokens) and the same out / lse (<= 1e-6 relative, lse 1e-5);
# likewise the contiguous shard, Quest with a page set per q-head, a prompt that is not
# attended (prefill none) or attended sparsely (block_sparse). Dense decode passes its own
# verification gate against exact float64 decode (and the gate trips when set impossibly
# tight). Sequence 0 of a batch equals a batch-1 run bit for bit. Config errors of the decode
# keys fail with exit 2 and the key named.
#
# seq_len 3072 with 16-token pages splits into 2P chunks of whole pages for P = 1..4 (3072 =
# 8 x 384, 384 = 16 x lcm(2, 4, 6, 8)); 40 steps cross two decode-page boundaries (pages of
# 16: the steps land on decode pages 0, 1, 2, owned by ranks 0, 1, 2 on >= 3 ranks).
set(SR_DEC_DIR ${CMAKE_CURRENT_BINARY_DIR}/decode)
file(MAKE_DIRECTORY ${SR_DEC_DIR})
set(SR_DEC_ENV "${SR_MPI_ENV};SR_TEST_FIXED_TIMES=1")
set(SR_DEC_ARGS -q -f --set backend=cpu --set attention.phase=decode --set seq_len=3072
    --set model.layers=2 --set model.q_heads=4 --set model.kv_heads=2
    --set attention.block_q=16 --set attention.block_k=16 --set attention.sparsity=0.9
    --set decode.batch=2 --set decode.steps=40 --set verify.rows=4)
set(SR_DEC_CLI $<TARGET_FILE:sparsering_cli>)

# sr_decode_run(name NP n FIXTURE f ARGS ...): a decode run writing ${SR_DEC_DIR}/<name>.h5.
function(sr_decode_run name)
  cmake_parse_arguments(T "" "NP;FIXTURE" "ARGS" ${ARGN})
  sr_mpi_test(decode_${name} NP ${T_NP}
              COMMAND ${SR_DEC_CLI} ${SR_DEC_ARGS} ${T_ARGS} -o ${SR_DEC_DIR}/${name}.h5
              LABELS decode TIMEOUT 60)
  set_tests_properties(decode_${name} PROPERTIES FIXTURES_SETUP ${T_FIXTURE}
                       ENVIRONMENT "${SR_DEC_ENV}")
endfunction()

# sr_decode_agree(name A B FIXTURES f... [TOL rel lse]): h5cmp of two runs' files (2 layers).
function(sr_decode_agree name a b)
  cmake_parse_arguments(T "" "" "FIXTURES;TOL" ${ARGN})
  if(NOT T_TOL)
    set(T_TOL 1e-6 1e-5)
  endif()
  add_test(NAME decode_${name}
           COMMAND h5cmp ${SR_DEC_DIR}/${a}.h5 ${SR_DEC_DIR}/${b}.h5 2 ${T_TOL})
  set_tests_properties(decode_${name} PROPERTIES FIXTURES_REQUIRED "${T_FIXTURES}" LABELS decode
                       PASS_REGULAR_EXPRESSION "files agree")
endfunction()

# 1. Every method on 1..4 ranks (zigzag shard): identical selections, outputs within 1e-6.
foreach(method dense quest snapkv ada_snapkv)
  foreach(np 1 2 3 4)
    sr_decode_run(${method}_np${np} NP ${np} FIXTURE decode_${method}
                  ARGS --set attention.method=${method})
  endforeach()
  foreach(np 2 3 4)
    sr_decode_agree(${method}_agree_np${np} ${method}_np1 ${method}_np${np}
                    FIXTURES decode_${method})
  endforeach()
endforeach()
# A dense decode file holds no selection; a Quest file does (h5cmp checks "both or neither").
find_program(SR_DEC_H5LS h5ls)
if(SR_DEC_H5LS)
  add_test(NAME decode_layout_dense COMMAND ${SR_DEC_H5LS} -r ${SR_DEC_DIR}/dense_np2.h5/layers/0)
  set_tests_properties(decode_layout_dense PROPERTIES FIXTURES_REQUIRED decode_dense LABELS decode
                       PASS_REGULAR_EXPRESSION "/lse +Dataset {4, 80}"
                       FAIL_REGULAR_EXPRESSION "selection")
  add_test(NAME decode_layout_quest COMMAND ${SR_DEC_H5LS} -r ${SR_DEC_DIR}/quest_np2.h5/layers/0)
  set_tests_properties(decode_layout_quest PROPERTIES FIXTURES_REQUIRED decode_quest LABELS decode
                       PASS_REGULAR_EXPRESSION "/out +Dataset {4, 80, 64}.*/selection/indptr +Dataset {9}")
endif()

# 2. The contiguous shard (Quest: a global top-k over candidates that sit elsewhere).
foreach(np 2 3 4)
  sr_decode_run(quest_contiguous_np${np} NP ${np} FIXTURE decode_quest_contiguous
                ARGS --set attention.method=quest --set shard=contiguous)
  sr_decode_agree(quest_contiguous_agree_np${np} quest_np1 quest_contiguous_np${np}
                  FIXTURES "decode_quest;decode_quest_contiguous")
endforeach()

# 3. Quest with a page set per q-head (share_pages false): 1 rank against 3.
foreach(np 1 3)
  sr_decode_run(quest_pages_per_head_np${np} NP ${np} FIXTURE decode_quest_per_head
                ARGS --set attention.method=quest --set attention.share_pages=false)
endforeach()
sr_decode_agree(quest_pages_per_head_agree quest_pages_per_head_np1 quest_pages_per_head_np3
                FIXTURES decode_quest_per_head)

# 4. The prompt not attended (prefill none: its K/V only fill the cache) and attended with
#    block_sparse: the rank counts agree, and since the cache holds the same K/V either way the
#    decode result equals that of the default prefill (dense) exactly.
foreach(prefill none block_sparse)
  foreach(np 1 3)
    sr_decode_run(quest_prefill_${prefill}_np${np} NP ${np} FIXTURE decode_prefill_${prefill}
                  ARGS --set attention.method=quest --set attention.prefill=${prefill})
  endforeach()
  sr_decode_agree(quest_prefill_${prefill}_agree quest_prefill_${prefill}_np1
                  quest_prefill_${prefill}_np3 FIXTURES decode_prefill_${prefill})
  sr_decode_agree(quest_prefill_${prefill}_same_decode quest_np1 quest_prefill_${prefill}_np1
                  FIXTURES "decode_quest;decode_prefill_${prefill}" TOL 0 0)
endforeach()

# 5. Dense decode passes its own verification gate (verify.rows 4: four steps of every
#    sequence and q-head against exact float64 dense decode; a failure is exit 6): the run
#    succeeds and its report holds relerr_max within the fp32 limit; with verify.max_relerr set
#    below the float32 error the same run must trip the gate (exit 6, nothing published).
sr_mpi_test(decode_dense_verify NP 3
            COMMAND ${SR_DEC_CLI} ${SR_DEC_ARGS} --set attention.method=dense
                    --set report.json=${SR_DEC_DIR}/dense_verify.json LABELS decode TIMEOUT 60)
set_tests_properties(decode_dense_verify PROPERTIES FIXTURES_SETUP decode_dense_verify
                     ENVIRONMENT "${SR_DEC_ENV}")
add_test(NAME decode_dense_verify_check
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/check_json.sh ${SR_DEC_DIR}/dense_verify.json relerr_max 1e-5)
set_tests_properties(decode_dense_verify_check PROPERTIES FIXTURES_REQUIRED decode_dense_verify
                     LABELS decode)
set(SR_DEC_SMALL --set backend=cpu --set attention.phase=decode --set seq_len=2048
    --set decode.steps=8 --set verify.rows=4 -q)
# The gate itself is decode's (prefill none: no prefill verification runs before it).
sr_error_test(decode_gate_trips EXIT 6
              REGEX "verification failed: layer 0: decode relative error .* > verify.max_relerr 1e-12 \\(dense, fp32 storage\\)"
              NP 2 ARGS ${SR_DEC_SMALL} --set attention.method=dense --set attention.prefill=none
                        --set verify.max_relerr=1e-12 -f -o ${SR_DEC_DIR}/gate_trips.h5)
set_tests_properties(err_decode_gate_trips PROPERTIES FIXTURES_SETUP decode_gate LABELS "errors;decode")
add_test(NAME decode_gate_not_published
         COMMAND bash -c "! ls -d gate_trips.h5 gate_trips.h5.partial 2>/dev/null | grep ."
         WORKING_DIRECTORY ${SR_DEC_DIR})
set_tests_properties(decode_gate_not_published PROPERTIES FIXTURES_REQUIRED decode_gate LABELS decode)

# 6. Sequence 0 of a batch of 3 equals a batch-1 run bit for bit (out, lse, selection row), for
#    a method whose choice is per sequence and kv-head (quest) and one with a global top-k
#    across heads (ada_snapkv); the other sequences differ (tests/decode_batch.sh, h5py).
foreach(method quest ada_snapkv)
  foreach(b 1 3)
    sr_decode_run(${method}_batch${b} NP 2 FIXTURE decode_${method}_batch
                  ARGS --set attention.method=${method} --set decode.batch=${b})
  endforeach()
  add_test(NAME decode_${method}_batch_seq0
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/decode_batch.sh ${SR_DEC_DIR}/${method}_batch1.h5
                   ${SR_DEC_DIR}/${method}_batch3.h5 2 3 40)
  set_tests_properties(decode_${method}_batch_seq0 PROPERTIES FIXTURES_REQUIRED decode_${method}_batch
                       LABELS decode SKIP_RETURN_CODE 77)
endforeach()

# 7. Config errors of the decode keys (exit 2, the key named, nothing computed).
sr_error_test(decode_quest_budget_not_pages EXIT 2
              REGEX "attention.token_budget: 100 is not a multiple of 16" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=quest --set attention.token_budget=100)
sr_error_test(decode_quest_budget_too_big EXIT 2
              REGEX "attention.token_budget: quest.s budget of 2048 tokens needs 16 <= budget <= seq_len - 16" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=quest --set attention.token_budget=2048)
sr_error_test(decode_snapkv_capacity_132 EXIT 2
              REGEX "attention.token_capacity: 132 is neither 0 nor in .133, " NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=snapkv --set attention.token_capacity=132)
# The capacity from sparsity: (1 - 0.95) x 2048 = 102 tokens, not above the 132 always kept.
# These (and budget_too_big) expect the key that sets the value named after the location, as
# every other cross-field message does ("--set attention.sparsity: ..."); the messages name the
# method instead ("--set snapkv: a capacity of ...", "--set quest: a budget of ..."): failing.
sr_error_test(decode_snapkv_capacity_sparsity EXIT 2
              REGEX "attention.sparsity: snapkv.s capacity of 102 tokens must exceed 132" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=snapkv --set attention.sparsity=0.95)
sr_error_test(decode_ada_capacity_sparsity EXIT 2
              REGEX "attention.sparsity: ada_snapkv.s capacity of 102 tokens must exceed 132" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=ada_snapkv --set attention.sparsity=0.95)
sr_error_test(decode_method_in_prefill EXIT 2
              REGEX "attention.method: quest is a decode method \\(set attention.phase: decode\\)" NP 2
              ARGS --set seq_len=2048 --set verify.rows=4 -q --set attention.method=quest)
sr_error_test(prefill_method_in_decode EXIT 2
              REGEX "attention.method: block_sparse is a prefill method" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=block_sparse)
sr_error_test(decode_seq_len_not_pages EXIT 2
              REGEX "seq_len: 2040 is not a multiple of 16" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=dense --set seq_len=2040)
sr_error_test(decode_bad_prefill EXIT 2 REGEX "attention.prefill: 'quest' is not one of none, dense" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=dense --set attention.prefill=quest)
sr_error_test(decode_hdf5_batch EXIT 2 REGEX "decode.batch: an HDF5 input holds one sequence" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=dense --set decode.batch=2
                   --set input.source=hdf5 --set input.path=missing.h5)
# A rank's chunk that is not whole pages (2064 = 4 chunks of 516 on 2 ranks; 4-token blocks
# make the prefill plan possible): a shape error (exit 3) naming the chunk.
sr_error_test(decode_chunk_not_pages EXIT 3 REGEX "chunk of 516 tokens.*not whole pages" NP 2
              ARGS ${SR_DEC_SMALL} --set attention.method=dense --set seq_len=2064
                   --set attention.block_q=4 --set attention.block_k=4)
