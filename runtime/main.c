/*
 * main.c — the sparsering command line.
 *
 * Every rank parses the same arguments and config, so usage and config errors are reached by
 * all ranks alike; they still agree (sr_comm_agree) before anything collective, because a file
 * may be readable on one node and not another. Only rank 0 prints. The process exit code
 * depends on the error class (sr_exit_code), the same on every rank, so `mpirun` returns it.
 */
#include "sparsering.h"
#include "sr_comm.h"
#include "sr_config.h"
#include "sr_internal.h"
#include "sr_run.h"

#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "Usage: mpirun -np P sparsering [run|config] [options]\n"
          "\n"
          "Sharded sparse attention over long contexts (The Sparse Frontier methods), with\n"
          "only the selected KV blocks exchanged between ranks.\n"
          "\n"
          "Commands:\n"
          "  run       run the configured attention (default)\n"
          "  config    print the effective config (YAML) and exit\n"
          "\n"
          "Options:\n"
          "  -c, --config FILE     YAML config (default: the embedded demo, configs/demo.yaml)\n"
          "  -s, --set KEY=VALUE   override a config key, repeatable, applied in order;\n"
          "                        e.g. --set attention.sparsity=0.95 --set seq_len=32768\n"
          "  -o, --output PATH     HDF5 output file (same as --set output.path=PATH)\n"
          "  -f, --force           overwrite an existing output (output.overwrite=true)\n"
          "  -j, --json PATH       JSON report (same as --set report.json=PATH)\n"
          "  -q, --quiet           no progress lines and no config echo\n"
          "  -h, --help            this help\n"
          "  -V, --version         print the version\n"
          "\n"
          "Exit codes: 0 ok, 2 usage or config error, 3 shape error (seq_len, ranks, input\n"
          "shapes), 4 I/O error, 5 output exists, 1 other failure.\n"
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
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);

  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
      {"output", required_argument, 0, 'o'}, {"force", no_argument, 0, 'f'},
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
  while (st == SR_OK && (c = getopt_long(argc, argv, ":c:s:o:fj:qhV", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 's': overrides[n_over++] = strdup(optarg); break;
    case 'o': overrides[n_over++] = kv("output.path", optarg); break;
    case 'f': overrides[n_over++] = strdup("output.overwrite=true"); break;
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
    if (strcmp(command, "run") != 0 && strcmp(command, "config") != 0)
      st = sr__seterr(SR_ERR_USAGE, "unknown command '%s' (expected run or config)", command);
    else if (optind < argc)
      st = sr__seterr(SR_ERR_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
  }

  if (st == SR_OK)
    st = sr_config_load(&cfg, config_path, (const char *const *)overrides, n_over);
  if (st == SR_OK) st = sr_config_validate(&cfg);
  if (quiet) cfg.progress = false;
  st = sr_comm_agree(MPI_COMM_WORLD, st);
  if (st != SR_OK) goto fail;

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
  sr_run_result res;
  st = sr_run(&cfg, &w, &res);
  if (st == SR_OK && rank == 0) {
    sr_report_print(&cfg, &res, stdout);
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
