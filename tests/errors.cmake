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
# The hint names the real unit (2P chunks of whole blocks: 96 on 3 ranks with 16-token blocks), not 2P.
sr_error_test(seq_len_hint EXIT 3 REGEX "use a multiple of 96 = 6 x lcm" NP 3 ARGS ${SR_SMALL} --set seq_len=1000)
sr_error_test(impossible_rank_count EXIT 3 REGEX "3 ranks" NP 3 ARGS ${SR_SMALL} --set attention.block_q=64 --set attention.block_k=64)
sr_error_test(kv_heads_divide EXIT 2 REGEX "kv_heads" NP 2 ARGS ${SR_SMALL} --set model.kv_heads=3)
sr_error_test(missing_input EXIT 4 REGEX "missing.h5" NP 2
              ARGS ${SR_SMALL} --set input.source=hdf5 --set input.path=missing.h5)
sr_error_test(malformed_input EXIT 4 REGEX "not_hdf5.h5" NP 2
              ARGS ${SR_SMALL} --set input.source=hdf5 --set input.path=not_hdf5.h5)
sr_error_test(output_exists EXIT 5 REGEX "exists.h5.*exists" NP 2 KEEP exists.h5
              ARGS ${SR_SMALL} -o exists.h5)
sr_error_test(output_dir_missing EXIT 4 REGEX "nodir" NP 2 ARGS ${SR_SMALL} -o nodir/out.h5)

# ---- Output locations, literal file names, bounded parsing, long names, non-regular files ----
# sr_refusal_test(name EXIT code REGEX re NP n [KEEP file] [ABSENT file...] [TIMEOUT s] ARGS ...):
# sr_error_test, plus files that must not exist after the refusal (nor their .partial /
# .partial.d) and a CTest time limit (default 30 s; expect_error.sh itself allows 10 s).
function(sr_refusal_test name)
  cmake_parse_arguments(T "" "EXIT;REGEX;NP;KEEP;TIMEOUT" "ABSENT;ARGS" ${ARGN})
  set(opts)
  if(T_KEEP)
    list(APPEND opts --keep ${T_KEEP})
  endif()
  foreach(f ${T_ABSENT})
    list(APPEND opts --absent ${f})
  endforeach()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 30)
  endif()
  add_test(NAME err_${name}
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh ${T_EXIT} ${T_REGEX} ${T_NP} ${opts}
                   -- ${SR_CLI} ${T_ARGS}
           WORKING_DIRECTORY ${SR_ERR_DIR})
  set_tests_properties(err_${name} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS errors
                       ENVIRONMENT "${SR_MPI_ENV};MPIEXEC=${SR_MPIEXEC}")
endfunction()

# 1. Two outputs naming one file (compared after resolving the directory, and by inode): the
#    JSON report used to overwrite the HDF5 result with exit 0. Refused before computing.
file(WRITE ${SR_ERR_DIR}/same_keep.h5 "an earlier result that must survive\n")
file(WRITE ${SR_ERR_DIR}/same_cfg.yaml "seq_len: 2048\nverify:\n  rows: 4\n")
sr_refusal_test(same_output_json EXIT 2 REGEX "output.path and report.json name the same file \\(same1.h5\\)"
                NP 2 ABSENT same1.h5 ARGS ${SR_SMALL} -o same1.h5 --json same1.h5)
sr_refusal_test(same_output_json_resolved EXIT 2
                REGEX "output.path \\(same2.h5\\) and report.json \\(../errors/same2.h5\\) name the same file"
                NP 2 ABSENT same2.h5 ARGS ${SR_SMALL} -o same2.h5 --json ../errors/same2.h5)
sr_refusal_test(same_output_json_overwrite EXIT 2 REGEX "name the same file" NP 2 KEEP same_keep.h5
                ARGS ${SR_SMALL} -f -o same_keep.h5 --json ./same_keep.h5)
sr_refusal_test(same_json_partial EXIT 2 REGEX "output.path's partial file and report.json name the same file \\(same3.h5.partial\\)" NP 2
                ABSENT same3.h5 ARGS ${SR_SMALL} -o same3.h5 --json same3.h5.partial)
sr_refusal_test(same_json_checkpoint_dir EXIT 2 REGEX "output.path's checkpoint directory .*report.json" NP 2
                ABSENT same4.h5 ARGS ${SR_SMALL} -o same4.h5 --json same4.h5.partial.d)
sr_refusal_test(same_json_config EXIT 2 REGEX "report.json and the config file \\(-c\\) name the same file"
                NP 2 KEEP same_cfg.yaml ARGS -q -c same_cfg.yaml --json same_cfg.yaml)
sr_refusal_test(same_output_input EXIT 2 REGEX "output.path and input.path name the same file \\(same_keep.h5\\)"
                NP 2 KEEP same_keep.h5
                ARGS ${SR_SMALL} -f -o same_keep.h5 --set input.source=hdf5 --set input.path=same_keep.h5)

# 3. Every output location checked before computing: a dangling symbolic link at the output
#    (the run computed everything, then exited 5), a report directory that does not exist or a
#    report path that is a directory (found only after the run), a FIFO as the report (hung).
file(CREATE_LINK nowhere/gone.h5 ${SR_ERR_DIR}/dangling.h5 SYMBOLIC)
file(MAKE_DIRECTORY ${SR_ERR_DIR}/json_is_dir)
execute_process(COMMAND mkfifo ${SR_ERR_DIR}/fifo_json ERROR_QUIET)
sr_refusal_test(output_dangling_link EXIT 5
                REGEX "^sparsering: error: dangling.h5: a dangling symbolic link \\(to 'nowhere/gone.h5'\\) is in the way"
                NP 2 ARGS ${SR_SMALL} -o dangling.h5)
sr_refusal_test(output_dangling_link_force EXIT 5 REGEX "dangling.h5: a dangling symbolic link" NP 2
                ARGS ${SR_SMALL} -f -o dangling.h5)
sr_refusal_test(json_dir_missing EXIT 4 REGEX "nodir_json: report.json directory does not exist" NP 2
                ABSENT json_dir_missing.h5
                ARGS ${SR_SMALL} -o json_dir_missing.h5 --json nodir_json/r.json)
sr_refusal_test(json_is_directory EXIT 4 REGEX "json_is_dir: report.json path is a directory" NP 2
                ABSENT json_is_dir.h5 ARGS ${SR_SMALL} -o json_is_dir.h5 --json json_is_dir)
sr_refusal_test(json_fifo EXIT 4 REGEX "fifo_json: is a FIFO, not a regular file \\(report.json\\)" NP 2
                ARGS ${SR_SMALL} --json fifo_json)
sr_refusal_test(output_is_directory EXIT 4 REGEX "json_is_dir: output path is a directory" NP 2
                ARGS ${SR_SMALL} -f -o json_is_dir)

# 4. A 200 kB config of nested brackets took about a minute to parse (quadratic in libyaml's
#    scanner) and nested mappings said "aliases nest too deeply": bounded, and said as it is.
string(REPEAT "[" 100000 SR_OPEN)
string(REPEAT "]" 100000 SR_CLOSE)
file(WRITE ${SR_ERR_DIR}/deep_lists.yaml "seq_len: ${SR_OPEN}1${SR_CLOSE}\n")
string(REPEAT "{a: " 40000 SR_OPEN)
string(REPEAT "}" 40000 SR_CLOSE)
file(WRITE ${SR_ERR_DIR}/deep_maps.yaml "model:\n  q_heads: ${SR_OPEN}1${SR_CLOSE}\n")
sr_refusal_test(deep_lists EXIT 2 REGEX "deep_lists.yaml:1: nesting deeper than 32 levels" NP 2
                TIMEOUT 10 ARGS -c deep_lists.yaml)
sr_refusal_test(deep_maps EXIT 2 REGEX "deep_maps.yaml:2: nesting deeper than 32 levels" NP 2
                TIMEOUT 10 ARGS -c deep_maps.yaml)

# 5. A 4000-byte file name filled the message and hid the reason: names are shortened instead.
string(REPEAT "a" 255 SR_SEG)
set(SR_LONG "${SR_ERR_DIR}/nodir")
foreach(i RANGE 14)
  string(APPEND SR_LONG "/${SR_SEG}")
endforeach()
sr_refusal_test(long_config_name EXIT 4 REGEX "\\.\\.\\.a+/x\\.yaml: No such file or directory$" NP 2
                ARGS -c ${SR_LONG}/x.yaml)
sr_refusal_test(long_output_name EXIT 4 REGEX "output directory does not exist \\(for .*\\.\\.\\.a+/out\\.h5\\)$"
                NP 2 ARGS ${SR_SMALL} -o ${SR_LONG}/out.h5)

# 6. A FIFO (or any non-regular file) as the config hung every rank; refused before it is opened.
execute_process(COMMAND mkfifo ${SR_ERR_DIR}/fifo_config.yaml ERROR_QUIET)
sr_refusal_test(config_fifo EXIT 4 REGEX "fifo_config.yaml: not a regular file \\(a FIFO\\)" NP 2
                ARGS -c fifo_config.yaml)
sr_refusal_test(config_directory EXIT 4 REGEX "json_is_dir: not a regular file \\(a directory\\)" NP 2
                ARGS -c json_is_dir)

# 2. File names on the command line are literal (tests/cli_paths.sh): -o null, -o '#run1.h5',
#    -o '"q".h5' wrote nothing or another name with exit 0; -o 'run: 1.h5' was a YAML error.
set(SR_PATHS_DIR ${CMAKE_CURRENT_BINARY_DIR}/cli_paths)
file(MAKE_DIRECTORY ${SR_PATHS_DIR})
add_test(NAME cli_literal_paths COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli_paths.sh
         WORKING_DIRECTORY ${SR_PATHS_DIR})
set_tests_properties(cli_literal_paths PROPERTIES TIMEOUT 120 LABELS errors
                     ENVIRONMENT "${SR_MPI_ENV};MPIEXEC=${SR_MPIEXEC};SR_BIN=$<TARGET_FILE:sparsering_cli>")
