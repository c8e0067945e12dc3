# The cost model (runtime/sr_cost.c): the paper's shares, hand-computed values, monotonicity,
# the budget comparison; and the `sparsering cost` subcommand (no MPI launcher: it uses none).
sr_unit_test(test_cost SOURCES test_cost.c LABELS unit TIMEOUT 60)

add_test(NAME cli_cost_table COMMAND ${SR_CLI} cost --model qwen2.5-7b --n 16384)
set_tests_properties(cli_cost_table PROPERTIES TIMEOUT 30 LABELS "cli;cost"
  PASS_REGULAR_EXPRESSION "# model +N sparsity batch +attn_TF.*\n  Qwen2.5-7B +16384 +0.0000 +1 ")
add_test(NAME cli_cost_compare
         COMMAND ${SR_CLI} cost --model qwen2.5-7b,qwen2.5-14b,qwen2.5-32b --n 128000 --sparsity 0.9
                 --phase prefill --compare qwen2.5-7b)
set_tests_properties(cli_cost_compare PROPERTIES TIMEOUT 30 LABELS "cli;cost"
  PASS_REGULAR_EXPRESSION "# answer: at N=128000, prefill, batch 1, sparsity 0.9: the largest model within Qwen2.5-7B dense's budget is Qwen2.5-14B")
add_test(NAME cli_cost_help COMMAND ${SR_CLI} cost --help)
set_tests_properties(cli_cost_help PROPERTIES TIMEOUT 30 LABELS "cli;cost"
  PASS_REGULAR_EXPRESSION "Usage: sparsering cost")

# Refusals: exit code and the one-line message on stderr (expect_error.sh, without mpirun).
# sr_cost_error(name EXIT code REGEX re ARGS ...)
function(sr_cost_error name)
  cmake_parse_arguments(T "" "EXIT;REGEX" "ARGS" ${ARGN})
  add_test(NAME cli_cost_${name}
           COMMAND sh -c "out=$(\"$0\" cost \"$@\" 2>&1 >/dev/null); rc=$?; echo \"$out\"; [ $rc -eq ${T_EXIT} ] || { echo \"exit $rc, expected ${T_EXIT}\"; exit 1; }; [ $(printf '%s\\n' \"$out\" | wc -l) -eq 1 ] || { echo 'not one line'; exit 1; }; printf '%s\\n' \"$out\" | grep -qE -- \"^sparsering: error: .*${T_REGEX}\" || { echo 'message does not match'; exit 1; }"
                   ${SR_CLI} ${T_ARGS})
  set_tests_properties(cli_cost_${name} PROPERTIES TIMEOUT 30 LABELS "cli;cost;errors")
endfunction()
sr_cost_error(unknown_model EXIT 2 REGEX "unknown model 'qwen-9b' .valid: qwen2.5-7b, .*gemma-3-27b, all.$"
              ARGS --model qwen-9b)
sr_cost_error(unknown_compare EXIT 2 REGEX "--compare: unknown model 'gpt'" ARGS --compare gpt)
sr_cost_error(bad_n EXIT 2 REGEX "--n: '12x'" ARGS --n 16384,12x)
sr_cost_error(bad_sparsity EXIT 2 REGEX "--sparsity: '1.0' is not a number in .0, 1.$" ARGS --sparsity 0.5,1.0)
sr_cost_error(bad_phase EXIT 2 REGEX "--phase: 'both2'" ARGS --phase both2)
sr_cost_error(bad_option EXIT 2 REGEX "unknown option '--bogus'" ARGS --bogus)
sr_cost_error(json_dir_missing EXIT 4 REGEX "nodir/c.json: cannot write" ARGS --json nodir/c.json)
# The same refusal under mpirun (the launcher a job script uses), through expect_error.sh.
sr_error_test(cost_unknown_model EXIT 2 REGEX "unknown model 'qwen-9b'" NP 1 ARGS cost --model qwen-9b)
