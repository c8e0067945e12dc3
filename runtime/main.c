/*
 * main.c — the sparsering command line.
 *
 * Every rank parses the same arguments and config, so usage and config errors are reached by
 * all ranks alike; they still agree (sr_comm_agree) before anything collective, because a file
 * may be readable on one node and not another. Only rank 0 prints. The process exit code
 * depends on the error class (sr_exit_code), the same on every rank, so `mpirun` returns it.
 *
 * File names given as options (-c, -o, --json) are taken literally: "-o null" writes a file
 * called null (sr_config_load never parses the value of a string key as YAML). Before the run
 * computes anything, every place it will write is checked on rank 0 and the verdict agreed
 * (sr_outputs_check): two outputs naming one file, a missing directory, a dangling symbolic
 * link or an existing output are refused at once, not after hours of computing.
 *
 * SIGTERM and SIGUSR1 (what Slurm's --signal sends; mpirun forwards SIGUSR1 to every rank)
 * only set a flag: the run stops at the next layer boundary with its checkpoint written and
 * the process exits with SR_EXIT_INTERRUPTED (75), which a job script requeues on.
 */
#include "sparsering.h"
#include "sr_ckpt.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_cost.h"
#include "sr_h5.h"
#include "sr_inspect.h"
#include "sr_internal.h"
#include "sr_run.h"

#include <getopt.h>
#include <inttypes.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "Usage: mpirun -np P sparsering [run|config] [options]\n"
          "       mpirun -np P sparsering inspect [options]   (sparsering inspect --help)\n"
          "       sparsering cost [options]                   (sparsering cost --help)\n"
          "\n"
          "Sharded sparse attention over long contexts (The Sparse Frontier methods), with\n"
          "only the selected KV blocks exchanged between ranks. Prefill: dense, block_sparse,\n"
          "vertical_slash, flexprefill; decode on a sharded KV cache (attention.phase: decode):\n"
          "dense, quest, snapkv, ada_snapkv.\n"
          "\n"
          "Commands:\n"
          "  run       run the configured attention (default)\n"
          "  config    print the effective config (YAML) and exit\n"
          "  inspect   how concentrated the input's attention is: the mass of each row's top-k\n"
          "            keys, per head, exact in float64 (synthetic or HDF5 input)\n"
          "  cost      the paper's cost model for whole models (Qwen2.5, Llama-3.1, Gemma-3):\n"
          "            prefill FLOPs and decode traffic per N, sparsity and batch; no MPI\n"
          "\n"
          "Options:\n"
          "  -c, --config FILE     YAML config (default: the embedded demo, configs/demo.yaml)\n"
          "  -s, --set KEY=VALUE   override a config key, repeatable, applied in order;\n"
          "                        e.g. --set attention.sparsity=0.95 --set seq_len=32768\n"
          "  -o, --output PATH     HDF5 output file (same as --set output.path=PATH)\n"
          "  -f, --force           overwrite an existing output, or discard the checkpoint of\n"
          "                        an interrupted run (output.overwrite=true)\n"
          "  -r, --resume          continue the checkpoint of an interrupted run, if there is\n"
          "                        one (output.resume=true); docs/CHECKPOINT.md\n"
          "  -j, --json PATH       JSON report (same as --set report.json=PATH)\n"
          "  -q, --quiet           no progress lines and no config echo\n"
          "  -h, --help            this help\n"
          "  -V, --version         print the version\n"
          "\n"
          "Exit codes: 0 ok, 2 usage or config error (also: a resume refused because the\n"
          "config, input, rank count or backend changed), 3 shape error (seq_len, ranks, input\n"
          "shapes), 4 I/O error (also: a damaged checkpoint, an input changed while read, NaN\n"
          "or Inf in q, k, v), 5 output or checkpoint exists, 6 the result failed its own\n"
          "verification (verify.max_relerr), 75 stopped by SIGTERM/SIGUSR1 with the\n"
          "checkpoint written (requeue and --resume),\n"
          "1 other failure.\n"
          "Keys, types and defaults: docs/CONFIG.md. Output schema: docs/HDF5.md.\n");
}

/* Builds "key=value" in a malloc'd string. */
static char *kv(const char *key, const char *value) {
  size_t n = strlen(key) + strlen(value) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s=%s", key, value);
  return s;
}

int main(int argc, char **argv) {
  /* SIGTERM / SIGUSR1 only set a flag from the first instant: a job script may signal while
   * MPI_Init is still starting up (seconds on a busy node), and the default action would kill
   * the rank. A run that was signalled before its first layer stops at once with exit 75. */
  /* `inspect` has its own options and runs its own MPI life cycle. */
  if (argc > 1 && strcmp(argv[1], "inspect") == 0) return sr_inspect_main(argc - 1, argv + 1);
  /* `cost` is arithmetic only: no MPI at all (it also runs without mpirun). */
  if (argc > 1 && strcmp(argv[1], "cost") == 0) return sr_cost_main(argc - 1, argv + 1);
  sr_ckpt_signals_install();
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);

  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
      {"output", required_argument, 0, 'o'}, {"force", no_argument, 0, 'f'},
      {"resume", no_argument, 0, 'r'},
      {"json", required_argument, 0, 'j'},   {"quiet", no_argument, 0, 'q'},
      {"help", no_argument, 0, 'h'},         {"version", no_argument, 0, 'V'},
      {0, 0, 0, 0}};
  sr_config cfg;
  sr_config_defaults(&cfg);
  const char *config_path = NULL;
  char **overrides = calloc((size_t)argc + 4, sizeof(char *));
  int n_over = 0, quiet = 0, exit_code = 0;
  sr_status st = SR_OK;
  opterr = 0;
  int c;
  while (st == SR_OK && (c = getopt_long(argc, argv, ":c:s:o:frj:qhV", opts, NULL)) != -1) {
    /* An empty file name is a mistake (an unset shell variable), not "none". */
    if ((c == 'c' || c == 'o' || c == 'j') && optarg && !optarg[0]) {
      st = sr__seterr(SR_ERR_USAGE, "option %s needs a file name, got an empty one (see --help)",
                      c == 'c' ? "-c/--config" : c == 'o' ? "-o/--output" : "-j/--json");
      break;
    }
    switch (c) {
    case 'c': config_path = optarg; break;
    case 's': overrides[n_over++] = strdup(optarg); break;
    case 'o': overrides[n_over++] = kv("output.path", optarg); break;
    case 'f': overrides[n_over++] = strdup("output.overwrite=true"); break;
    case 'r': overrides[n_over++] = strdup("output.resume=true"); break;
    case 'j': overrides[n_over++] = kv("report.json", optarg); break;
    case 'q': quiet = 1; break;
    case 'h':
      if (rank == 0) usage(stdout);
      goto finish;
    case 'V':
      if (rank == 0) printf("sparsering %s\n", sr_version());
      goto finish;
    case ':':
      st = sr__seterr(SR_ERR_USAGE, "option %s needs a value (see --help)", argv[optind - 1]);
      break;
    default:
      st = sr__seterr(SR_ERR_USAGE, "unknown option '%s' (see --help)", argv[optind - 1]);
    }
  }
  const char *command = "run";
  if (st == SR_OK && optind < argc) {
    command = argv[optind++];
    if (strcmp(command, "cost") == 0 || strcmp(command, "inspect") == 0)
      st = sr__seterr(SR_ERR_USAGE, "'%s' must be the first argument, before any option "
                      "(sparsering %s --help)", command, command);
    else if (strcmp(command, "run") != 0 && strcmp(command, "config") != 0)
      st = sr__seterr(SR_ERR_USAGE, "unknown command '%s' (expected run, config, inspect or cost first)", command);
    else if (optind < argc)
      st = sr__seterr(SR_ERR_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
  }

  if (st == SR_OK)
    st = sr_config_load(&cfg, config_path, (const char *const *)overrides, n_over);
  if (st == SR_OK) st = sr_config_validate(&cfg);
  if (quiet) cfg.progress = false;
  st = sr_comm_agree(MPI_COMM_WORLD, st);
  if (st != SR_OK) goto fail;
  /* Every output location, before anything is computed (rank 0 looks, all agree). */
  if (strcmp(command, "run") == 0) {
    st = sr_outputs_check(MPI_COMM_WORLD, &cfg, config_path);
    if (st != SR_OK) goto fail;
  }

  if (strcmp(command, "config") == 0 || !quiet) {
    if (rank == 0) {
      char *yaml = sr_config_to_yaml(&cfg);
      const char *pfx = strcmp(command, "config") == 0 ? "" : "# ";
      if (*pfx) printf("# effective config (%s):\n", cfg.source_name ? cfg.source_name : "?");
      for (char *line = yaml ? strtok(yaml, "\n") : NULL; line; line = strtok(NULL, "\n"))
        printf("%s%s\n", pfx, line);
      free(yaml);
      fflush(stdout);
    }
    if (strcmp(command, "config") == 0) goto finish;
  }

  sr_world w;
  st = sr_comm_agree(MPI_COMM_WORLD, sr_world_init(&w, MPI_COMM_WORLD));
  if (st != SR_OK) goto fail;
  sr_ckpt_signals_install(); /* again, in case the MPI library installed its own */
  sr_run_result res;
  st = sr_run(&cfg, &w, &res);
  if (st == SR_OK && res.stop_signal) {
    /* Stopped between layers by SIGTERM / SIGUSR1: not an error; the job script requeues. */
    if (rank == 0) {
      const char *name = res.stop_signal == SIGTERM ? "SIGTERM"
                         : res.stop_signal == SIGUSR1 ? "SIGUSR1" : "a signal";
      if (res.layers_kept > 0)
        fprintf(stderr, "sparsering: interrupted by %s before layer %d of %d: checkpoint of %d "
                "layer%s kept in %s (run again with --resume)\n", name, res.stopped_at,
                cfg.layers, res.layers_kept, res.layers_kept == 1 ? "" : "s", res.ckpt_dir);
      else if (res.ckpt_dir)
        fprintf(stderr, "sparsering: interrupted by %s before layer %d of %d: no layer was done, "
                "nothing kept (run again)\n", name, res.stopped_at, cfg.layers);
      else
        fprintf(stderr, "sparsering: interrupted by %s before layer %d of %d: nothing kept "
                "(no output, or output.checkpoint off; run again)\n", name, res.stopped_at,
                cfg.layers);
    }
    exit_code = SR_EXIT_INTERRUPTED;
    sr_run_result_free(&res);
    sr_world_free(&w);
    goto finish;
  }
  if (st == SR_OK && rank == 0) {
    sr_report_print(&cfg, &res, stdout);
    if (!quiet && res.ckpt_dir) {
      int computed = cfg.layers - res.layers_resumed;
      printf("# checkpoint: %d layer%s recorded in %.3f s (checksums %.3f s, close + sync + "
             "record %.3f s), %.1f kB besides the data (snapshots, unit files, manifests)\n",
             computed, computed == 1 ? "" : "s", res.ckpt_s + res.ckpt_hash_s, res.ckpt_hash_s,
             res.ckpt_s, (double)res.ckpt_bytes / 1e3);
      if (res.layers_resumed > 0)
        printf("# resumed: layers 0-%d from %s (not recomputed; their rows above are from the "
               "run that computed them), %.3f GB verified in %.3f s\n", res.layers_resumed - 1,
               res.ckpt_dir, (double)res.resume_bytes / 1e9, res.resume_s);
      fflush(stdout);
    }
    if (cfg.report_json) st = sr_report_json(&cfg, &res, cfg.report_json);
  }
  st = sr_comm_agree(w.comm, st);
  sr_run_result_free(&res);
  sr_world_free(&w);
  if (st != SR_OK) goto fail;
  goto finish;

fail:
  if (rank == 0) fprintf(stderr, "sparsering: error: %s\n", sr_last_error());
  exit_code = sr_exit_code(st);
finish:
  sr_config_free(&cfg);
  for (int i = 0; i < n_over; i++) free(overrides[i]);
  free(overrides);
  MPI_Finalize();
  return exit_code;
}
