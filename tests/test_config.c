/*
 * test_config.c — the config module: schema defaults, the embedded demo, YAML round trips of
 * random configs, --set overrides, and one test per error class, each checking the exact
 * one-line message (file, line, dotted key, problem) and the status class.
 */
#define _POSIX_C_SOURCE 200809L
#include "sr_config.h"
#include "sr_internal.h"
#include "sr_test.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Loads YAML text named "x.yaml" in messages. */
static sr_status load_text(sr_config *c, const char *yaml, const char *const *sets, int n) {
  return sr_config_load_string(c, yaml, strlen(yaml), "x.yaml", sets, n);
}

/* Expects a load to fail with status `want` and exactly `msg`, leaving the defaults behind. */
static void expect_error(const char *yaml, const char *const *sets, int n, sr_status want,
                         const char *msg) {
  sr_config c, d;
  sr_status s = load_text(&c, yaml, sets, n);
  if (s != want || strcmp(sr_last_error(), msg) != 0)
    fprintf(stderr, "# got %d '%s'\n# want %d '%s'\n", s, sr_last_error(), want, msg);
  assert_int_equal(s, want);
  assert_string_equal(sr_last_error(), msg);
  sr_config_defaults(&d);
  assert_int_equal(c.q_heads, d.q_heads);
  assert_int_equal(c.seq_len, d.seq_len);
  assert_null(c.out_path);
  assert_null(c.source_name);
  sr_config_free(&c);
}

static void expect_equal(const sr_config *a, const sr_config *b) {
  assert_int_equal(a->q_heads, b->q_heads);
  assert_int_equal(a->kv_heads, b->kv_heads);
  assert_int_equal(a->head_dim, b->head_dim);
  assert_int_equal(a->layers, b->layers);
  assert_int_equal(a->input_source, b->input_source);
  assert_true((a->input_path == NULL) == (b->input_path == NULL));
  if (a->input_path) assert_string_equal(a->input_path, b->input_path);
  assert_true(a->seed == b->seed);
  assert_int_equal(a->synth.sink_tokens, b->synth.sink_tokens);
  assert_true(a->synth.sink_strength == b->synth.sink_strength);
  assert_true(a->synth.locality == b->synth.locality);
  assert_true(a->synth.rope_base == b->synth.rope_base);
  assert_int_equal(a->synth.heavy_hitters, b->synth.heavy_hitters);
  assert_true(a->synth.heavy_strength == b->synth.heavy_strength);
  assert_int_equal(a->synth.needles, b->synth.needles);
  assert_true(a->synth.needle_strength == b->synth.needle_strength);
  assert_int_equal(a->synth.needle_span, b->synth.needle_span);
  assert_true(a->synth.noise == b->synth.noise);
  assert_true(a->seq_len == b->seq_len);
  assert_int_equal(a->shard, b->shard);
  assert_int_equal(a->phase, b->phase);
  assert_int_equal(a->method, b->method);
  assert_int_equal(a->block_q, b->block_q);
  assert_int_equal(a->block_k, b->block_k);
  assert_int_equal(a->top_chunks, b->top_chunks);
  assert_true(a->sparsity == b->sparsity);
  assert_int_equal(a->exchange, b->exchange);
  assert_int_equal(a->backend, b->backend);
  assert_int_equal(a->threads, b->threads);
  assert_true((a->out_path == NULL) == (b->out_path == NULL));
  if (a->out_path) assert_string_equal(a->out_path, b->out_path);
  assert_int_equal(a->write_mask, b->write_mask);
  assert_int_equal(a->overwrite, b->overwrite);
  assert_true(a->verify_rows == b->verify_rows);
  assert_true((a->report_json == NULL) == (b->report_json == NULL));
  if (a->report_json) assert_string_equal(a->report_json, b->report_json);
  assert_int_equal(a->progress, b->progress);
}

/* ---- defaults, demo, files ------------------------------------------------------------------- */

static void test_defaults(void **state) {
  (void)state;
  sr_config c;
  memset(&c, 0xA5, sizeof c); /* defaults must not read what was there */
  sr_config_defaults(&c);
  assert_int_equal(c.q_heads, 8);
  assert_int_equal(c.kv_heads, 2);
  assert_int_equal(c.head_dim, 64);
  assert_int_equal(c.layers, 1);
  assert_int_equal(c.input_source, SR_INPUT_SYNTHETIC);
  assert_null(c.input_path);
  assert_true(c.seed == 1234);
  assert_int_equal(c.synth.sink_tokens, 4);
  assert_true(c.synth.sink_strength == 8.0f);
  assert_true(c.synth.locality == 6.0f);
  assert_true(c.synth.rope_base == 10000.0f);
  assert_int_equal(c.synth.heavy_hitters, 4);
  assert_true(c.synth.heavy_strength == 6.0f);
  assert_int_equal(c.synth.needles, 4);
  assert_true(c.synth.needle_strength == 14.0f);
  assert_int_equal(c.synth.needle_span, 16);
  assert_true(c.synth.noise == 1.0f);
  assert_true(c.seq_len == 16384);
  assert_int_equal(c.shard, SR_SHARD_ZIGZAG);
  assert_int_equal(c.phase, SR_PHASE_PREFILL);
  assert_int_equal(c.method, SR_METHOD_BLOCK_SPARSE);
  assert_int_equal(c.block_q, 16);
  assert_int_equal(c.block_k, 16);
  assert_int_equal(c.top_chunks, 0);
  assert_true(c.sparsity == 0.9);
  assert_int_equal(c.exchange, SR_EXCHANGE_SELECTED);
  assert_int_equal(c.backend, SR_BACKEND_AUTO);
  assert_int_equal(c.threads, 0);
  assert_null(c.out_path);
  assert_int_equal(c.write_mask, SR_WRITE_OUT | SR_WRITE_LSE | SR_WRITE_SELECTION);
  assert_false(c.overwrite);
  assert_true(c.verify_rows == 64);
  assert_null(c.report_json);
  assert_true(c.progress);
  assert_null(c.source_name);
  assert_int_equal(sr_config_validate(&c), SR_OK);

  /* A file that sets nothing but one key gets exactly the defaults elsewhere. */
  sr_config l;
  assert_int_equal(load_text(&l, "threads: 3\n", NULL, 0), SR_OK);
  assert_int_equal(l.threads, 3);
  l.threads = 0;
  expect_equal(&l, &c);
  assert_string_equal(l.source_name, "x.yaml");
  sr_config_free(&l);
  assert_null(l.source_name);
}

static void test_demo_loads(void **state) {
  (void)state;
  sr_config c, s;
  assert_int_equal(sr_config_load(&c, NULL, NULL, 0), SR_OK);
  assert_string_equal(c.source_name, "<embedded demo>");
  /* What configs/demo.yaml says. */
  assert_int_equal(c.q_heads, 8);
  assert_int_equal(c.kv_heads, 2);
  assert_int_equal(c.method, SR_METHOD_BLOCK_SPARSE);
  assert_int_equal(c.block_q, 16);
  assert_int_equal(c.block_k, 16);
  assert_true(c.sparsity == 0.9);
  assert_true(c.seq_len == 16384);
  assert_true(c.verify_rows == 64);
  /* What it leaves to the schema. */
  assert_int_equal(c.threads, 0);
  assert_true(c.synth.noise == 1.0f);
  assert_int_equal(sr_config_validate(&c), SR_OK);
  assert_int_equal(sr_config_load_string(&s, sr_demo_yaml, strlen(sr_demo_yaml), "demo", NULL, 0),
                   SR_OK);
  expect_equal(&c, &s);
  sr_config_free(&c);
  sr_config_free(&s);
}

static void test_load_file(void **state) {
  (void)state;
  char path[] = "/tmp/sr_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *text = "# a comment\n"
                     "model:\n"
                     "  q_heads: 16\n"
                     "  kv_heads: 4\n"
                     "attention:\n"
                     "  method: dense\n"
                     "output:\n"
                     "  path: \"run 1/out.h5\"\n"
                     "  write: [lse]\n";
  assert_true(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
  close(fd);
  sr_config c;
  assert_int_equal(sr_config_load(&c, path, NULL, 0), SR_OK);
  assert_int_equal(c.q_heads, 16);
  assert_int_equal(c.kv_heads, 4);
  assert_int_equal(c.method, SR_METHOD_DENSE);
  assert_string_equal(c.out_path, "run 1/out.h5");
  assert_int_equal(c.write_mask, SR_WRITE_LSE);
  assert_string_equal(c.source_name, path);
  sr_config_free(&c);

  /* Errors in a file name the path and the line. */
  fd = open(path, O_WRONLY | O_TRUNC);
  const char *bad = "model:\n  q_heads: 8\nattention:\n  sparsity: 1.3\n";
  assert_true(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
  close(fd);
  char want[256];
  snprintf(want, sizeof want, "%s:4: attention.sparsity: 1.3 is outside [0, 1)", path);
  assert_int_equal(sr_config_load(&c, path, NULL, 0), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), want);
  unlink(path);
}

/* ---- round trip ------------------------------------------------------------------------------ */

static uint64_t rnd(uint64_t *s, uint64_t n) { return sr_test_next(s) % n; }

static char *random_path(uint64_t *s) {
  static const char *const parts[] = {"out", "run 1", "a:b", "#x",        "'q'", "\"dq\"", "yes",
                                      "123", "-dash", "é",   "tab\there", "[x]", "{y}",    "a: b"};
  char buf[256] = "";
  int n = 1 + (int)rnd(s, 4);
  for (int i = 0; i < n; i++) {
    strcat(buf, i ? "/" : (rnd(s, 2) ? "/" : ""));
    strcat(buf, parts[rnd(s, sizeof parts / sizeof parts[0])]);
  }
  strcat(buf, ".h5");
  return strdup(buf);
}

static float rnd_float(uint64_t *s, float hi) {
  return (float)((double)(sr_test_next(s) >> 11) * 0x1.0p-53) * hi;
}

static void random_config(sr_config *c, uint64_t *s) {
  sr_config_defaults(c);
  c->kv_heads = 1 + (int)rnd(s, 8);
  c->q_heads = c->kv_heads * (1 + (int)rnd(s, 8));
  c->head_dim = 8 * (1 + (int)rnd(s, 32));
  c->layers = 1 + (int)rnd(s, 4096);
  c->input_source = rnd(s, 2) ? SR_INPUT_HDF5 : SR_INPUT_SYNTHETIC;
  c->input_path = c->input_source == SR_INPUT_HDF5 ? random_path(s) : NULL;
  c->seed = sr_test_next(s);
  c->synth.sink_tokens = (uint32_t)rnd(s, 1000);
  c->synth.sink_strength = rnd_float(s, 10);
  c->synth.locality = rnd_float(s, 10);
  c->synth.rope_base = 1 + rnd_float(s, 1e6f);
  c->synth.heavy_hitters = (uint32_t)rnd(s, 1000);
  c->synth.heavy_strength = rnd_float(s, 1e-3f);
  c->synth.needles = (uint32_t)rnd(s, 1000);
  c->synth.needle_strength = rnd_float(s, 1e5f);
  c->synth.needle_span = 1 + (uint32_t)rnd(s, 4096);
  c->synth.noise = rnd_float(s, 2);
  c->seq_len = 1 + (int64_t)rnd(s, (uint64_t)1 << 40);
  c->shard = rnd(s, 2) ? SR_SHARD_CONTIGUOUS : SR_SHARD_ZIGZAG;
  c->method = rnd(s, 2) ? SR_METHOD_DENSE : SR_METHOD_BLOCK_SPARSE;
  c->block_q = 1 + (int)rnd(s, 4096);
  c->block_k = 1 + (int)rnd(s, 4096);
  c->top_chunks = rnd(s, 2) ? 0 : 3 + (int)rnd(s, 1000);
  c->sparsity = (double)(sr_test_next(s) >> 11) * 0x1.0p-53;
  c->exchange = rnd(s, 2) ? SR_EXCHANGE_DENSE_RING : SR_EXCHANGE_SELECTED;
  c->backend = rnd(s, 2) ? SR_BACKEND_CPU : SR_BACKEND_AUTO;
  c->threads = (int)rnd(s, 100);
  c->out_path = rnd(s, 2) ? random_path(s) : NULL;
  c->write_mask = 1 + (unsigned)rnd(s, 7);
  c->overwrite = rnd(s, 2);
  c->verify_rows = (int64_t)rnd(s, 100000) - 1;
  c->report_json = rnd(s, 2) ? random_path(s) : NULL;
  c->progress = rnd(s, 2);
}

static void test_round_trip(void **state) {
  (void)state;
  uint64_t seed = sr_test_seed("test_config round trip");
  for (int iter = 0; iter < 300; iter++) {
    sr_config a, b;
    random_config(&a, &seed);
    assert_int_equal(sr_config_validate(&a), SR_OK);
    char *text = sr_config_to_yaml(&a);
    assert_non_null(text);
    sr_status s = sr_config_load_string(&b, text, strlen(text), "effective", NULL, 0);
    if (s != SR_OK) fprintf(stderr, "# %s\n%s", sr_last_error(), text);
    assert_int_equal(s, SR_OK);
    expect_equal(&a, &b);
    char *again = sr_config_to_yaml(&b);
    assert_string_equal(text, again);
    assert_true(sr_config_hash(&a) == sr_config_hash(&b));
    /* Every key is written, defaults included, and a change moves the hash. */
    assert_non_null(strstr(text, "\n  progress: "));
    assert_non_null(strstr(text, "\n    noise: "));
    uint64_t h = sr_config_hash(&b);
    b.synth.noise = nextafterf(b.synth.noise, 100.0f);
    assert_true(sr_config_hash(&b) != h);
    free(text);
    free(again);
    sr_config_free(&a);
    sr_config_free(&b);
  }
}

/* ---- overrides ------------------------------------------------------------------------------- */

static void test_overrides(void **state) {
  (void)state;
  const char *yaml = "model:\n  q_heads: 8\nseq_len: 1024\nattention:\n  method: block_sparse\n";
  const char *sets[] = {
      "seq_len=32768",                /* top-level scalar                        */
      "attention.method=dense",       /* nested, replacing a value of the file   */
      "output.write=[out, lse]",      /* a list, in a section the file lacks     */
      "input.synthetic.noise = 0.25", /* two levels created; spaces around =     */
      "model.q_heads=4",              /* later overrides win...                  */
      "model.q_heads=16",
      "output.path=a b: c.h5",   /* a string key's value is the text itself */
      "report={json: r.json}",   /* a whole section                         */
  };
  sr_config c;
  assert_int_equal(load_text(&c, yaml, sets, 8), SR_OK);
  assert_true(c.seq_len == 32768);
  assert_int_equal(c.method, SR_METHOD_DENSE);
  assert_int_equal(c.write_mask, SR_WRITE_OUT | SR_WRITE_LSE);
  assert_true(c.synth.noise == 0.25f);
  assert_int_equal(c.q_heads, 16);
  assert_string_equal(c.out_path, "a b: c.h5");
  assert_string_equal(c.report_json, "r.json");
  assert_true(c.progress); /* the rest of the replaced section keeps its default */
  assert_int_equal(c.kv_heads, 2);
  sr_config_free(&c);

  /* An empty value clears a string. */
  const char *clear[] = {"output.path=/x.h5", "output.path="};
  assert_int_equal(load_text(&c, "seq_len: 64\n", clear, 2), SR_OK);
  assert_null(c.out_path);
  sr_config_free(&c);

  /* Overrides apply to the embedded demo too. */
  const char *dense[] = {"attention.method=dense"};
  assert_int_equal(sr_config_load(&c, NULL, dense, 1), SR_OK);
  assert_int_equal(c.method, SR_METHOD_DENSE);
  assert_int_equal(c.block_q, 16);
  sr_config_free(&c);
}

/* ---- file names are literal; bounded parsing; messages keep their reason --------------------- */

/* The value of a string key given with --set (what -o and --json become) is the file name
 * itself: before, it was parsed as YAML, so "null" meant no output, "#x" was a comment (no
 * output), '"q".h5' was refused or cut and "a: b" was a mapping (refused). */
static void test_literal_paths(void **state) {
  (void)state;
  static const char *const names[] = {"null", "~", "#run1.h5", "\"q\".h5", "run: 1.h5", "'q'",
                                      "[x]", "{y}", "yes", "123", "- a", "&a", "*a", "!x", "%x",
                                      "@x", "`x", "a #b", " lead", "trail ", "tab\there",
                                      "nl\nhere", "é"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char o[64], j[64], in[64];
    snprintf(o, sizeof o, "output.path=%s", names[i]);
    snprintf(j, sizeof j, "report.json=%s", names[i]);
    snprintf(in, sizeof in, "input.path=%s", names[i]);
    const char *sets[] = {"input.source=hdf5", o, j, in, "seq_len=0x800", "attention.method=dense"};
    sr_config c, d;
    sr_status st = load_text(&c, "seq_len: 8\n", sets, 6);
    if (st != SR_OK) fprintf(stderr, "# '%s': %s\n", names[i], sr_last_error());
    assert_int_equal(st, SR_OK);
    assert_non_null(c.out_path);
    assert_string_equal(c.out_path, names[i]);
    assert_string_equal(c.report_json, names[i]);
    assert_string_equal(c.input_path, names[i]);
    /* Numbers and names still parse. */
    assert_true(c.seq_len == 2048);
    assert_int_equal(c.method, SR_METHOD_DENSE);
    /* The effective config (strings quoted) loads back to the same names: before, a quoted
     * 'null' or '~' read back as no file at all. */
    char *text = sr_config_to_yaml(&c);
    assert_non_null(text);
    st = sr_config_load_string(&d, text, strlen(text), "effective", NULL, 0);
    if (st != SR_OK) fprintf(stderr, "# %s\n%s", sr_last_error(), text);
    assert_int_equal(st, SR_OK);
    expect_equal(&c, &d);
    free(text);
    sr_config_free(&c);
    sr_config_free(&d);
  }
  /* Empty: back to none (a file name cannot be empty). */
  const char *clear[] = {"output.path=x.h5", "output.path="};
  sr_config c;
  assert_int_equal(load_text(&c, "seq_len: 8\n", clear, 2), SR_OK);
  assert_null(c.out_path);
  sr_config_free(&c);
  /* In a file, YAML rules: plain ~ / null / empty and '' are none, a quoted 'null' a name. */
  static const struct { const char *yaml, *want; } cases[] = {
      {"output:\n  path: null\n", NULL},      {"output:\n  path: ~\n", NULL},
      {"output:\n  path:\n", NULL},           {"output:\n  path: ''\n", NULL},
      {"output:\n  path: NULL\n", NULL},      {"output:\n  path: !!null x\n", NULL},
      {"output:\n  path: 'null'\n", "null"},  {"output:\n  path: \"~\"\n", "~"},
      {"output:\n  path: nUll\n", "nUll"},    {"output:\n  path: 'a: b'\n", "a: b"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(load_text(&c, cases[i].yaml, NULL, 0), SR_OK);
    if (!cases[i].want) {
      assert_null(c.out_path);
    } else {
      assert_non_null(c.out_path);
      assert_string_equal(c.out_path, cases[i].want);
    }
    sr_config_free(&c);
  }
  /* What cannot be a file name is refused, with the reason. */
  const char *bad[] = {"output.path=\xff\xfe.h5"};
  expect_error("seq_len: 8\n", bad, 1, SR_ERR_CONFIG,
               "--set output.path: the value is not UTF-8 text");
  expect_error("output:\n  path: \"a\\0b\"\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: output.path: 'a?b' contains a NUL byte");
}

/* Text of `depth` nested flow lists or mappings around a value (malloc'd). */
static char *nested(const char *prefix, int depth, bool mapping) {
  size_t n = strlen(prefix) + (size_t)depth * 5 + 8;
  char *t = malloc(n), *p = t;
  assert_non_null(t);
  p += sprintf(p, "%s", prefix);
  for (int i = 0; i < depth; i++) p += sprintf(p, "%s", mapping ? "{a: " : "[");
  p += sprintf(p, "1");
  for (int i = 0; i < depth; i++) *p++ = mapping ? '}' : ']';
  sprintf(p, "\n");
  return t;
}

/* 200 kB of nested brackets took close to a minute (libyaml's scanner rechecks every open level
 * for every token: quadratic) and nested mappings were reported as "aliases nest too deeply".
 * Now the nesting is refused, at its line, as soon as it passes the bound (the CTest TIMEOUT of
 * this program, tests/config.cmake, fails the old code). */
static void test_error_deep_nesting(void **state) {
  (void)state;
  char *t = nested("seq_len: ", 100000, false); /* 200 kB */
  expect_error(t, NULL, 0, SR_ERR_CONFIG, "x.yaml:1: nesting deeper than 32 levels of lists and "
                                          "mappings");
  free(t);
  t = nested("seq_len: ", 40000, true); /* 200 kB */
  expect_error(t, NULL, 0, SR_ERR_CONFIG, "x.yaml:1: nesting deeper than 32 levels of lists and "
                                          "mappings");
  free(t);
  /* Block style: one level per line. */
  char *b = malloc(64 * 130), *p = b;
  for (int i = 0; i < 60; i++) p += sprintf(p, "%*sa:\n", 2 * i, "");
  expect_error(b, NULL, 0, SR_ERR_CONFIG, "x.yaml:33: nesting deeper than 32 levels of lists and "
                                          "mappings");
  free(b);
  /* The same bound for a --set value. */
  char *v = nested("seq_len=", 50000, false);
  v[strlen(v) - 1] = '\0';
  const char *sets[] = {v};
  expect_error("seq_len: 8\n", sets, 1, SR_ERR_CONFIG,
               "--set seq_len: nesting deeper than 32 levels of lists and mappings");
  free(v);
  /* 32 levels are fine as far as nesting goes (the key then refuses the list). */
  t = nested("seq_len: ", 31, false);
  expect_error(t, NULL, 0, SR_ERR_CONFIG, "x.yaml:1: seq_len: expected a single value, got a list");
  free(t);
  /* Many values, many anchors: bounded too, with what was exceeded. */
  size_t n = 100001;
  t = malloc(16 + 3 * n);
  p = t + sprintf(t, "seq_len: [");
  for (size_t i = 0; i < n; i++) p += sprintf(p, "%s1", i ? "," : "");
  sprintf(p, "]\n");
  expect_error(t, NULL, 0, SR_ERR_CONFIG, "x.yaml:1: more than 100000 values");
  free(t);
  t = malloc(32 * 1100);
  p = t + sprintf(t, "seq_len: [");
  for (int i = 0; i < 1001; i++) p += sprintf(p, "%s&a%d 1", i ? "," : "", i);
  sprintf(p, "]\n");
  expect_error(t, NULL, 0, SR_ERR_CONFIG, "x.yaml:1: more than 1000 anchors (&name)");
  free(t);
  /* Only an alias can still nest past the bound: said as such. */
  expect_error("seq_len: &a [*a]\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml: aliases nest deeper than 48 levels (an alias inside its own anchor?)");
}

/* A FIFO as the config hung every rank (opening it for reading waits for a writer); a
 * directory or device is no config either. */
static void test_error_not_regular(void **state) {
  (void)state;
  char dir[] = "/tmp/sr_test_fifo_XXXXXX", fifo[64], want[160];
  assert_non_null(mkdtemp(dir));
  snprintf(fifo, sizeof fifo, "%s/c.yaml", dir);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  sr_config c;
  assert_int_equal(sr_config_load(&c, fifo, NULL, 0), SR_ERR_IO);
  snprintf(want, sizeof want, "%s: not a regular file (a FIFO); the config must be a file every "
           "rank can read", fifo);
  assert_string_equal(sr_last_error(), want);
  assert_int_equal(sr_config_load(&c, "/dev/null", NULL, 0), SR_ERR_IO);
  assert_string_equal(sr_last_error(), "/dev/null: not a regular file (a character device); the "
                                       "config must be a file every rank can read");
  unlink(fifo);
  rmdir(dir);
}

/* A 4000-byte file name filled the message, which ended before the reason. Now the name is
 * shortened (head...tail) and the reason stays. */
static void test_long_path_message(void **state) {
  (void)state;
  char path[4001], *p = path;
  for (int i = 0; i < 15; i++) p += sprintf(p, "/%0255d", i);
  p += sprintf(p, "/%0150d/x.yaml", 15); /* 3998 bytes, under PATH_MAX */
  sr_config c;
  assert_int_equal(sr_config_load(&c, path, NULL, 0), SR_ERR_IO);
  const char *m = sr_last_error();
  fprintf(stderr, "# %zu-byte path: %s\n", strlen(path), m);
  assert_true(strlen(m) < 400);
  assert_non_null(strstr(m, "...")); /* shortened */
  assert_non_null(strstr(m, "x.yaml: No such file or directory"));
  assert_true(strncmp(m, "/0000", 5) == 0);
  /* Errors inside such a file keep file:line, key and reason too. */
  char *long_name = path;
  assert_int_equal(sr_config_load_string(&c, "seq_len: abc\n", 13, long_name, NULL, 0),
                   SR_ERR_CONFIG);
  assert_non_null(strstr(sr_last_error(), "x.yaml:1: seq_len: 'abc' is not an integer"));
  /* Any message: long words are shortened, the reason kept; one line whatever the text. */
  sr__seterr(SR_ERR_IO, "%s: cannot create the checkpoint directory: %s", path,
             "No space left on device");
  m = sr_last_error();
  assert_true(strlen(m) < 900);
  assert_non_null(strstr(m, "x.yaml: cannot create the checkpoint directory: No space left on "
                            "device"));
  sr__seterr(SR_ERR_IO, "%s", "two\nlines");
  assert_string_equal(sr_last_error(), "two?lines");
  /* A message that names sr_last_error() itself. */
  sr__seterr(SR_ERR_IO, "inner");
  sr__seterr(SR_ERR_IO, "outer: %s", sr_last_error());
  assert_string_equal(sr_last_error(), "outer: inner");
  char buf[16];
  assert_string_equal(sr__short(buf, sizeof buf, "short"), "short");
  assert_string_equal(sr__short(buf, sizeof buf, "abcdefghijklmnopqrstuvwxyz"), "abcdef...uvwxyz");
}

/* ---- one test per error class ---------------------------------------------------------------- */

static void test_error_unknown_key(void **state) {
  (void)state;
  expect_error("model:\n  q_heads: 8\n  q_head: 3\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: model.q_head: unknown key (did you mean model.q_heads?)");
  expect_error("seq_len: 8\nfrobnicate: 1\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: frobnicate: unknown key");
  expect_error("model:\n  q_heads: 8\n  q_heads: 4\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: model.q_heads: duplicate key (first at line 2)");
}

static void test_error_wrong_type(void **state) {
  (void)state;
  expect_error("model:\n  q_heads: abc\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model.q_heads: 'abc' is not an integer");
  /* libcyaml alone would read these as 1, a huge number, 0.5 and true. */
  expect_error("model:\n  layers: 1.5\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model.layers: '1.5' is not an integer");
  expect_error("input:\n  seed: -1\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: input.seed: -1 is outside [0, 18446744073709551615]");
  expect_error("attention:\n  sparsity: 0.5 0.6\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: attention.sparsity: '0.5 0.6' is not a number");
  expect_error("report:\n  progress: maybe\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: report.progress: 'maybe' is not a boolean (true or false)");
  /* Structure: a list where a value goes, a value where a mapping goes (libcyaml's log). */
  expect_error("seq_len: 8\nattention:\n  block_q: [1, 2]\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: attention.block_q: expected a single value, got a list");
  expect_error("seq_len: 8\nmodel: 4\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model: expected a mapping of keys, got '4'");
  expect_error("output:\n  write: out\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: output.write: expected a list like [a, b], got 'out'");
}

static void test_error_out_of_range(void **state) {
  (void)state;
  expect_error("model:\n  q_heads: 8\nattention:\n  sparsity: 1.3\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:4: attention.sparsity: 1.3 is outside [0, 1)");
  expect_error("model:\n  q_heads: 0\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model.q_heads: 0 is outside [1, 1024]");
  expect_error("model:\n  q_heads: 99999999999\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model.q_heads: 99999999999 is outside [1, 1024]");
  expect_error("seq_len: 1099511627777\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:1: seq_len: 1099511627777 is outside [1, 1099511627776]");
  expect_error("attention:\n  top_chunks: 2\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: attention.top_chunks: 2 is neither 0 nor in [3, 1048576]");
  expect_error("model:\n  head_dim: 60\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: model.head_dim: 60 is not a multiple of 8");
  expect_error("input:\n  synthetic:\n    noise: -0.5\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: input.synthetic.noise: -0.5 is outside [0, 1000000]");
  expect_error("input:\n  synthetic:\n    needle_span: 0\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: input.synthetic.needle_span: 0 is outside [1, 4096]");
  const char *span[] = {"input.synthetic.needle_span=4097"};
  expect_error("seq_len: 64\n", span, 1, SR_ERR_CONFIG,
               "--set input.synthetic.needle_span: 4097 is outside [1, 4096]");
  expect_error("verify:\n  rows: -2\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: verify.rows: -2 is outside [-1, 1099511627776]");
}

static void test_error_bad_enum(void **state) {
  (void)state;
  expect_error("seq_len: 8\nattention:\n  phase: prefill\n  method: foo\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:4: attention.method: 'foo' is not one of dense, block_sparse, vertical_slash, flexprefill, quest, snapkv, ada_snapkv");
  /* Numbers are not accepted for names. */
  expect_error("shard: 1\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:1: shard: '1' is not one of zigzag, contiguous");
  /* A bad flag points at its own line of the list. */
  expect_error("output:\n  write:\n    - out\n    - bogus\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:4: output.write: 'bogus' is not one of out, lse, selection");
}

static void test_error_syntax(void **state) {
  (void)state;
  expect_error("model:\n  q_heads: 8\n   kv_heads: 2\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: YAML syntax error: mapping values are not allowed in this context");
  expect_error("seq_len: 8\nmodel: [1\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: YAML syntax error: did not find expected ',' or ']' (while parsing a "
               "flow sequence at line 2)");
  expect_error("- 1\n- 2\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:1: the top level must be a mapping of keys");
  expect_error("seq_len: 8\n---\nseq_len: 9\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: a second YAML document; a config is one");
}

static void test_error_empty(void **state) {
  (void)state;
  expect_error("", NULL, 0, SR_ERR_CONFIG, "x.yaml: empty configuration (no keys)");
  expect_error("# nothing but a comment\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml: empty configuration (no keys)");
}

static void test_error_missing_file(void **state) {
  (void)state;
  sr_config c;
  assert_int_equal(sr_config_load(&c, "/nonexistent/dir/x.yaml", NULL, 0), SR_ERR_IO);
  assert_string_equal(sr_last_error(), "/nonexistent/dir/x.yaml: No such file or directory");
  assert_int_equal(c.q_heads, 8);
  assert_int_equal(sr_config_load(&c, "/tmp", NULL, 0), SR_ERR_IO);
  assert_string_equal(sr_last_error(), "/tmp: not a regular file (a directory); the config must "
                                       "be a file every rank can read");
  assert_int_equal(sr_exit_code(SR_ERR_IO), 4);
}

static void test_error_set_key(void **state) {
  (void)state;
  const char *a[] = {"model.q_head=3"};
  expect_error("seq_len: 8\n", a, 1, SR_ERR_CONFIG,
               "--set model.q_head: unknown key (did you mean model.q_heads?)");
  const char *b[] = {"seq_len"};
  expect_error("seq_len: 8\n", b, 1, SR_ERR_CONFIG, "--set 'seq_len': expected key=value");
  const char *c[] = {"model={q_head: 1}"};
  expect_error("seq_len: 8\n", c, 1, SR_ERR_CONFIG,
               "--set model.q_head: unknown key (did you mean model.q_heads?)");
}

static void test_error_set_value(void **state) {
  (void)state;
  const char *a[] = {"seq_len=abc"};
  expect_error("seq_len: 8\n", a, 1, SR_ERR_CONFIG, "--set seq_len: 'abc' is not an integer");
  const char *b[] = {"attention.sparsity=1.3"};
  expect_error("seq_len: 8\nattention:\n  sparsity: 0.5\n", b, 1, SR_ERR_CONFIG,
               "--set attention.sparsity: 1.3 is outside [0, 1)");
  const char *c[] = {"attention.method=sparse"};
  expect_error("seq_len: 8\n", c, 1, SR_ERR_CONFIG,
               "--set attention.method: 'sparse' is not one of dense, block_sparse, vertical_slash, flexprefill, quest, snapkv, ada_snapkv");
  const char *d[] = {"output.write=[out"};
  expect_error("seq_len: 8\n", d, 1, SR_ERR_CONFIG,
               "--set output.write: '[out' is not a YAML value (did not find expected ',' or "
               "']')");
  /* The file is fine; only the override is wrong, and the message says so. */
  const char *e[] = {"seq_len=16"};
  sr_config cfg;
  assert_int_equal(load_text(&cfg, "seq_len: 8\n", e, 1), SR_OK);
  assert_true(cfg.seq_len == 16);
  sr_config_free(&cfg);
}

static void test_error_kv_heads(void **state) {
  (void)state;
  expect_error("model:\n  q_heads: 8\n  kv_heads: 3\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:3: model.kv_heads: 3 does not divide model.q_heads (8)");
  const char *s[] = {"model.q_heads=6"};
  expect_error("model:\n  kv_heads: 4\n", s, 1, SR_ERR_CONFIG,
               "x.yaml:2: model.kv_heads: 4 does not divide model.q_heads (6)");
  sr_config c;
  sr_config_defaults(&c);
  c.kv_heads = 3;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "model.kv_heads: 3 does not divide model.q_heads (8)");
}

/* ---- cross-field rules and bounds of configs built in code ----------------------------------- */

static void test_validate(void **state) {
  (void)state;
  sr_config c;
  sr_config_defaults(&c);
  c.input_source = SR_INPUT_HDF5;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "input.path: required when input.source is hdf5");
  expect_error("input:\n  source: hdf5\n", NULL, 0, SR_ERR_CONFIG,
               "x.yaml:2: input.path: required when input.source is hdf5");

  sr_config_defaults(&c);
  c.sparsity = 0;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_non_null(strstr(sr_last_error(), "attention.sparsity: block_sparse needs "
                                          "attention.top_chunks >= 3 or attention.sparsity > 0"));
  c.top_chunks = 3;
  assert_int_equal(sr_config_validate(&c), SR_OK);
  c.top_chunks = 0;
  c.method = SR_METHOD_DENSE; /* dense ignores the budget */
  assert_int_equal(sr_config_validate(&c), SR_OK);

  sr_config_defaults(&c);
  c.write_mask = 0;
  assert_int_equal(sr_config_validate(&c), SR_OK); /* nothing is written anyway */
  c.out_path = "o.h5";
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "output.write: empty, but output.path is set");

  sr_config_defaults(&c);
  c.block_k = 5000;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "attention.block_k: 5000 is outside [1, 4096]");
  sr_config_defaults(&c);
  c.synth.rope_base = 0.5f;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "input.synthetic.rope_base: 0.5 is outside [1, 1000000000]");
  sr_config_defaults(&c);
  c.synth.needle_span = 0;
  assert_int_equal(sr_config_validate(&c), SR_ERR_CONFIG);
  assert_string_equal(sr_last_error(), "input.synthetic.needle_span: 0 is outside [1, 4096]");
  sr_config_defaults(&c);
  c.synth.needle_span = 1;
  assert_int_equal(sr_config_validate(&c), SR_OK);
  assert_int_equal(load_text(&c, "input:\n  synthetic:\n    needle_span: 4096\n", NULL, 0), SR_OK);
  assert_int_equal(c.synth.needle_span, 4096);
  sr_config_free(&c);

  /* input.path is dropped when the input is synthetic. */
  assert_int_equal(load_text(&c, "input:\n  path: in.h5\n", NULL, 0), SR_OK);
  assert_null(c.input_path);
  sr_config_free(&c);
  assert_int_equal(load_text(&c, "input:\n  source: hdf5\n  path: in.h5\n", NULL, 0), SR_OK);
  assert_string_equal(c.input_path, "in.h5");
  sr_config_free(&c);
}

static void test_names(void **state) {
  (void)state;
  assert_string_equal(sr_method_name(SR_METHOD_DENSE), "dense");
  assert_string_equal(sr_method_name(SR_METHOD_BLOCK_SPARSE), "block_sparse");
  assert_string_equal(sr_exchange_name(SR_EXCHANGE_SELECTED), "selected");
  assert_string_equal(sr_exchange_name(SR_EXCHANGE_DENSE_RING), "dense_ring");
  assert_string_equal(sr_shard_name(SR_SHARD_ZIGZAG), "zigzag");
  assert_string_equal(sr_shard_name(SR_SHARD_CONTIGUOUS), "contiguous");
  assert_string_equal(sr_method_name((sr_method)7), "?");
}

/* docs/CONFIG.md's key table is in step with the schema: the same dotted keys in the same
 * order, each with the default that sr_config_to_yaml writes for the defaults (sections have
 * none). The keys and defaults are read from that YAML (every key, in schema order), so the
 * test needs nothing beyond the public API. The file is found next to this source file. */
static void test_docs_table(void **state) {
  (void)state;
  char path[4096];
  const char *src = __FILE__, *slash = strrchr(src, '/');
  if (!slash) {
    fprintf(stderr, "# __FILE__ has no directory: docs/CONFIG.md not checked\n");
    skip();
  }
  snprintf(path, sizeof path, "%.*s/../docs/CONFIG.md", (int)(slash - src), src);
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "# %s not found: not checked\n", path);
    skip();
  }
  /* The schema: "name default" pairs from the YAML of the defaults. */
  sr_config c;
  sr_config_defaults(&c);
  char *yaml = sr_config_to_yaml(&c);
  assert_non_null(yaml);
  char keys[128][64], defs[128][64], stack[8][64];
  int nk = 0;
  for (char *line = strtok(yaml, "\n"); line; line = strtok(NULL, "\n")) {
    int ind = 0;
    while (line[ind] == ' ') ind++;
    char *colon = strchr(line + ind, ':');
    if (!colon || ind % 2 || ind / 2 >= 8) continue;
    int lvl = ind / 2;
    snprintf(stack[lvl], sizeof stack[lvl], "%.*s", (int)(colon - line - ind), line + ind);
    assert_true(nk < 128);
    keys[nk][0] = '\0';
    for (int l = 0; l <= lvl; l++) {
      size_t len = strlen(keys[nk]);
      snprintf(keys[nk] + len, sizeof keys[nk] - len, "%s%s", l ? "." : "", stack[l]);
    }
    const char *v = colon + 1;
    while (*v == ' ') v++;
    snprintf(defs[nk], sizeof defs[nk], "%s", v);
    nk++;
  }
  free(yaml);
  /* The doc: table rows "| `key` | type | bounds | `default` | meaning |" (sections:
   * "| **`key`** | mapping | | | meaning |") after the "## Keys" heading. */
  char line[1024];
  bool in_keys = false;
  int nd = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "## ", 3) == 0) in_keys = strncmp(line, "## Keys", 7) == 0;
    if (!in_keys || strncmp(line, "| ", 2) != 0) continue;
    char *cell[6];
    int nc = 0;
    for (char *p = line; *p && nc < 6;) {
      char *bar = strchr(p, '|');
      if (!bar) break;
      /* "\|" inside a cell is an escaped bar (enum alternatives), not a separator. */
      while (bar && bar > line && bar[-1] == '\\') bar = strchr(bar + 1, '|');
      if (!bar) break;
      *bar = '\0';
      if (p != line) cell[nc++] = p;
      p = bar + 1;
    }
    if (nc < 5) continue;
    char name[128], def[128];
    if (sscanf(cell[0], " **`%127[^`]`**", name) != 1 && sscanf(cell[0], " `%127[^`]`", name) != 1)
      continue; /* the header row, or another table */
    def[0] = '\0';
    sscanf(cell[3], " `%127[^`]`", def);
    if (nd >= nk || strcmp(name, keys[nd]) != 0 || strcmp(def, defs[nd]) != 0)
      fprintf(stderr, "# docs/CONFIG.md row %d: '%s' default '%s'; schema: '%s' default '%s'\n",
              nd, name, def, nd < nk ? keys[nd] : "(none)", nd < nk ? defs[nd] : "");
    assert_true(nd < nk);
    assert_string_equal(name, keys[nd]);
    assert_string_equal(def, defs[nd]);
    nd++;
  }
  fclose(f);
  if (nd != nk) fprintf(stderr, "# docs/CONFIG.md lists %d keys, the schema %d\n", nd, nk);
  assert_int_equal(nd, nk);
}

/* libcyaml must not print: its log is captured, and the message is ours. */
static void test_quiet(void **state) {
  (void)state;
  char path[] = "/tmp/sr_test_stderr_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  sr_config c;
  sr_status s1 = load_text(&c, "attention:\n  method: foo\n", NULL, 0);
  sr_status s2 = load_text(&c, "model: [1]\n", NULL, 0);
  sr_status s3 = load_text(&c, "model:\n  q_heads: 1\n   x: 2\n", NULL, 0);
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  off_t size = lseek(fd, 0, SEEK_END);
  close(fd);
  unlink(path);
  assert_int_equal(s1, SR_ERR_CONFIG);
  assert_int_equal(s2, SR_ERR_CONFIG);
  assert_int_equal(s3, SR_ERR_CONFIG);
  assert_int_equal(size, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_demo_loads),
      cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_overrides),
      cmocka_unit_test(test_error_unknown_key),
      cmocka_unit_test(test_error_wrong_type),
      cmocka_unit_test(test_error_out_of_range),
      cmocka_unit_test(test_error_bad_enum),
      cmocka_unit_test(test_error_syntax),
      cmocka_unit_test(test_error_empty),
      cmocka_unit_test(test_error_missing_file),
      cmocka_unit_test(test_error_set_key),
      cmocka_unit_test(test_error_set_value),
      cmocka_unit_test(test_error_kv_heads),
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_quiet),
      cmocka_unit_test(test_docs_table),
      cmocka_unit_test(test_literal_paths),
      cmocka_unit_test(test_error_deep_nesting),
      cmocka_unit_test(test_error_not_regular),
      cmocka_unit_test(test_long_path_message),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
