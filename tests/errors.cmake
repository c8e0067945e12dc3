# One test per class of user error: each runs the real CLI under mpirun and checks the exit
# code, the single error line (naming file:line / key / shape), no hang, no complete-looking
# output. Inputs are made in the test's own working directory.
set(SR_ERR_DIR ${CMAKE_CURRENT_BINARY_DIR}/errors)
file(MAKE_DIRECTORY ${SR_ERR_DIR})
file(WRITE ${SR_ERR_DIR}/syntax.yaml "model:\n  q_heads: 8\n  kv_heads: [2\nseq_len: 4096\n")
file(WRITE ${SR_ERR_DIR}/unknown_key.yaml "model:\n  q_heads: 8\n  q_head: 2\n")
file(WRITE ${SR_ERR_DIR}/bad_method.yaml "attention:\n  method: sliding\n")
file(WRITE ${SR_ERR_DIR}/range.yaml "seq_len: 4096\nattention:\n  sparsity: 1.3\n")
file(WRITE ${SR_ERR_DIR}/not_hdf5.h5 "this is not an HDF5 file\n")
file(WRITE ${SR_ERR_DIR}/exists.h5 "an earlier result that must survive\n")

sr_error_test(yaml_syntax EXIT 2 REGEX "syntax.yaml:[0-9]+" NP 2 ARGS -c syntax.yaml)
sr_error_test(unknown_key EXIT 2 REGEX "unknown_key.yaml:3: .*q_head" NP 2 ARGS -c unknown_key.yaml)
sr_error_test(unknown_method EXIT 2 REGEX "bad_method.yaml:2: .*attention.method" NP 2 ARGS -c bad_method.yaml)
sr_error_test(out_of_range EXIT 2 REGEX "range.yaml:3: .*attention.sparsity" NP 2 ARGS -c range.yaml)
sr_error_test(bad_set_key EXIT 2 REGEX "attention.sparsty" NP 2 ARGS --set attention.sparsty=0.5)
sr_error_test(bad_set_value EXIT 2 REGEX "seq_len" NP 2 ARGS --set seq_len=abc)
sr_error_test(bad_option EXIT 2 REGEX "--bogus" NP 2 ARGS --bogus)
sr_error_test(missing_config EXIT 4 REGEX "nonexistent.yaml" NP 2 ARGS -c nonexistent.yaml)
sr_error_test(impossible_seq_len EXIT 3 REGEX "seq_len 1000" NP 4 ARGS ${SR_SMALL} --set seq_len=1000)
sr_error_test(impossible_rank_count EXIT 3 REGEX "3 ranks" NP 3 ARGS ${SR_SMALL} --set attention.block_q=64 --set attention.block_k=64)
sr_error_test(kv_heads_divide EXIT 2 REGEX "kv_heads" NP 2 ARGS ${SR_SMALL} --set model.kv_heads=3)
sr_error_test(missing_input EXIT 4 REGEX "missing.h5" NP 2
              ARGS ${SR_SMALL} --set input.source=hdf5 --set input.path=missing.h5)
sr_error_test(malformed_input EXIT 4 REGEX "not_hdf5.h5" NP 2
              ARGS ${SR_SMALL} --set input.source=hdf5 --set input.path=not_hdf5.h5)
sr_error_test(output_exists EXIT 5 REGEX "exists.h5.*exists" NP 2 KEEP exists.h5
              ARGS ${SR_SMALL} -o exists.h5)
sr_error_test(output_dir_missing EXIT 4 REGEX "nodir" NP 2 ARGS ${SR_SMALL} -o nodir/out.h5)
