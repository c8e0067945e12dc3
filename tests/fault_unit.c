/*
 * fault_unit.c — the checkpoint's own parsers and hash, without MPI: XXH64 against xxhsum's
 * values, a manifest / unit file / snapshot accepted when well formed and refused (SR_ERR_IO,
 * one line naming the file) for each kind of damage, and the snapshot's tiling rule.
 */
#include "sr_ckpt.h"
#include "sr_test.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

/* ---- XXH64 ---------------------------------------------------------------------------------- */

static void test_xxh64(void **state) {
  (void)state;
  /* Reference values from `xxhsum -H1` (xxHash 0.8.1). */
  assert_true(sr_xxh64("", 0, 0) == 0xef46db3751d8e999ull);
  assert_true(sr_xxh64("a", 1, 0) == 0xd24ec4f1a98c6e5bull);
  assert_true(sr_xxh64("abc", 3, 0) == 0x44bc2cf5ad770999ull);
  char buf[1000];
  for (int i = 0; i < 1000; i++)
    buf[i] = (char)(32 + (i * 7) % 95);
  assert_true(sr_xxh64(buf, 37, 0) == 0x0158b987c1d38f78ull);   /* tail paths after 32 */
  assert_true(sr_xxh64(buf, 1000, 0) == 0x1041045372069cc9ull); /* the 32-byte stripes */
  /* The seed matters; so does every byte. */
  assert_true(sr_xxh64(buf, 1000, 1) != sr_xxh64(buf, 1000, 0));
  buf[500] ^= 1;
  assert_true(sr_xxh64(buf, 1000, 0) != 0x1041045372069cc9ull);
}

/* ---- manifest ---------------------------------------------------------------------------------
 */

static const char good_manifest[] =
    "{\"geometry\": {\"q_heads\": 4, \"seq_len\": 2048, \"head_dim\": 64, \"block_q\": 16},\n"
    " \"units\": [\"0x8c51e964a8bf9207\", \"0xed85d58d166c33c0\"],\n"
    " \"format\": \"sparsering-checkpoint-1\", \"sparsering\": \"0.1.0\", \"hdf5\": \"1.10.8\",\n"
    " \"backend\": \"cpu\", \"ranks\": 2, \"layers\": 4, \"units_done\": 2,\n"
    " \"file_bytes\": 4314856, \"snapshot\": \"snap-000001.bin\", \"snapshot_bytes\": 18920,\n"
    " \"snapshot_hash\": \"0xec4b7868b5187b44\", \"result_hash\": \"0xb509cc5bd89fe882\",\n"
    " \"input_fingerprint\": \"0x0000000000000000\", \"config_hash\": \"0x0d8286aef2a1c91d\",\n"
    " \"result_config\": \"model:\\n  q_heads: 4\\n\", \"config\": \"model:\\n  q_heads: 4\\n\"}\n";

static sr_status parse(const char *text) {
  sr__manifest m;
  sr_status st = sr__ckpt_manifest_parse(text, strlen(text), "dir/manifest.json", &m);
  if (st == SR_OK) sr__manifest_free(&m);
  return st;
}

/* good_manifest with `from` replaced by `to` (once). */
static char *edit(const char *from, const char *to) {
  static char buf[4096];
  const char *at = strstr(good_manifest, from);
  assert_non_null(at);
  snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - good_manifest), good_manifest, to,
           at + strlen(from));
  return buf;
}

static void refused(const char *text, const char *fragment) {
  sr_status st = parse(text);
  if (st != SR_ERR_IO || !strstr(sr_last_error(), fragment) ||
      !strstr(sr_last_error(), "dir/manifest.json") || strchr(sr_last_error(), '\n'))
    fprintf(stderr, "# status %d, message: %s\n# text: %s\n", (int)st, sr_last_error(), text);
  assert_int_equal(st, SR_ERR_IO);
  assert_non_null(strstr(sr_last_error(), fragment));
  assert_null(strchr(sr_last_error(), '\n'));
}

static void test_manifest(void **state) {
  (void)state;
  sr__manifest m;
  assert_int_equal(sr__ckpt_manifest_parse(good_manifest, strlen(good_manifest), "m", &m), SR_OK);
  assert_int_equal(m.units_done, 2);
  assert_int_equal(m.ranks, 2);
  assert_int_equal(m.layers, 4);
  assert_true(m.file_bytes == 4314856 && m.snapshot_bytes == 18920);
  assert_true(m.result_hash == 0xb509cc5bd89fe882ull && m.input_fp == 0);
  assert_true(m.unit_hash[1] == 0xed85d58d166c33c0ull);
  assert_string_equal(m.backend, "cpu");
  assert_string_equal(m.snapshot, "snap-000001.bin");
  assert_string_equal(m.config_yaml, "model:\n  q_heads: 4\n");
  assert_true(m.seq_len == 2048 && m.block_q == 16);
  sr__manifest_free(&m);

  refused("", "not JSON");
  refused("{\"format\": \"sparsering-checkpoint-1\"", "not JSON");
  refused(good_manifest + 1, "not JSON");
  refused("[1, 2, 3]", "not a sparsering-checkpoint-1 manifest");
  refused(edit("checkpoint-1", "checkpoint-9"), "not a sparsering-checkpoint-1");
  refused(edit("\"ranks\": 2", "\"ranks\": 0"), "missing or malformed");
  refused(edit("\"ranks\": 2", "\"ranks\": 2.5"), "missing or malformed");
  refused(edit("\"ranks\": 2", "\"ranks\": \"2\""), "missing or malformed");
  refused(edit("\"file_bytes\": 4314856", "\"file_bytes\": -1"), "missing or malformed");
  refused(edit("\"file_bytes\": 4314856", "\"file_bytes\": 1e300"), "missing or malformed");
  refused(edit("0xb509cc5bd89fe882", "0xb509cc5bd89fe88"), "missing or malformed");
  refused(edit("0xb509cc5bd89fe882", "0xb509cc5bd89fe88g"), "missing or malformed");
  refused(edit("\"units_done\": 2", "\"units_done\": 3"), "layer counts disagree");
  refused(edit("\"units_done\": 2", "\"units_done\": 5"), "layer counts disagree");
  refused(edit("snap-000001.bin", "../../etc/passwd"), "snapshot name");
  refused(edit("\"block_q\": 16", "\"block_q\": 15"), "geometry");
  refused(edit("\"0x8c51e964a8bf9207\"", "17"), "unit checksum");
  refused(edit("\"config\": ", "\"configs\": "), "missing or malformed");
}

/* ---- unit file --------------------------------------------------------------------------- */

static void test_unit_file(void **state) {
  (void)state;
  const char *good = "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": ["
                     "{\"name\": \"out\", \"offset\": 4096, \"bytes\": 2097152, \"checksum\": "
                     "\"0x00000000000000aa\"},"
                     "{\"name\": \"selection/indices\", \"offset\": 0, \"bytes\": 0, \"checksum\": "
                     "\"0x00000000000000bb\"}], \"metrics\": {\"layer\": 1, \"time_s\": {}}}";
  sr__extent ext[SR_CK_N];
  int n = 0;
  uint64_t sum = 0;
  char *metrics = NULL;
  assert_int_equal(sr__ckpt_unit_parse(good, strlen(good), "u", 1, ext, &n, &sum, &metrics), SR_OK);
  assert_int_equal(n, 2);
  assert_int_equal(ext[0].kind, SR_CK_OUT);
  assert_true(ext[0].offset == 4096 && ext[0].bytes == 2097152 && ext[0].checksum == 0xaa);
  assert_int_equal(ext[1].kind, SR_CK_INDICES);
  assert_true(sum == 1);
  assert_non_null(metrics);
  assert_non_null(strstr(metrics, "\"layer\":1"));
  free(metrics);
  /* Another layer's file, an unknown dataset, a repeated one, a negative offset. */
  assert_int_equal(sr__ckpt_unit_parse(good, strlen(good), "u", 2, ext, &n, &sum, &metrics),
                   SR_ERR_IO);
  const char *bad[] = {
      "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": [{\"name\": \"q\", "
      "\"offset\": 1, \"bytes\": 1, \"checksum\": \"0x0000000000000001\"}]}",
      "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": [{\"name\": \"out\", "
      "\"offset\": 1, \"bytes\": 1, \"checksum\": \"0x0000000000000001\"}, {\"name\": \"out\", "
      "\"offset\": 1, \"bytes\": 1, \"checksum\": \"0x0000000000000001\"}]}",
      "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": [{\"name\": \"out\", "
      "\"offset\": -8, \"bytes\": 1, \"checksum\": \"0x0000000000000001\"}]}",
      "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": {}}",
      "{\"layer\": 1, \"checksum\": \"0x0000000000000001\", \"datasets\": [], \"metrics\": 3}",
      "{\"layer\": 1}",
      "nonsense",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    metrics = (char *)1;
    assert_int_equal(sr__ckpt_unit_parse(bad[i], strlen(bad[i]), "u", 1, ext, &n, &sum, &metrics),
                     SR_ERR_IO);
    assert_null(metrics);
    assert_int_equal(n, 0);
  }
}

/* ---- snapshot ---------------------------------------------------------------------------- */

/* A snapshot image of file_bytes with the given (offset, length) ranges, payload bytes i & 0xff. */
static uint8_t *image(uint64_t file_bytes, const uint64_t *rg, int nr, size_t *len) {
  uint64_t pay = 0;
  for (int i = 0; i < nr; i++)
    pay += rg[2 * i + 1];
  *len = 24 + 16 * (size_t)nr + (size_t)pay + 8;
  uint8_t *b = calloc(1, *len);
  memcpy(b, "SRSNAP01", 8);
  memcpy(b + 8, &file_bytes, 8); /* little-endian hosts */
  uint64_t n = (uint64_t)nr;
  memcpy(b + 16, &n, 8);
  memcpy(b + 24, rg, 16 * (size_t)nr);
  for (uint64_t i = 0; i < pay; i++)
    b[24 + 16 * nr + i] = (uint8_t)i;
  uint64_t h = sr_xxh64(b, *len - 8, 0);
  memcpy(b + *len - 8, &h, 8);
  return b;
}

static sr_status snap(const uint8_t *b, size_t len, uint64_t fb, const sr__extent *raw, int nraw) {
  uint64_t *ranges = NULL, nr = 0;
  const uint8_t *pay = NULL;
  sr_status st = sr__ckpt_snapshot_parse(b, len, "s.bin", fb, raw, nraw, &ranges, &nr, &pay);
  free(ranges);
  return st;
}

static void test_snapshot(void **state) {
  (void)state;
  /* [0,100) meta, [100,300) raw, [300,350) meta, [350,400) raw, raw of size 0 anywhere. */
  sr__extent raw[3] = {{SR_CK_OUT, 100, 200, 1}, {SR_CK_LSE, 350, 50, 2}, {SR_CK_INDICES, 7, 0, 3}};
  uint64_t rg[4] = {0, 100, 300, 50};
  size_t len = 0;
  uint8_t *b = image(400, rg, 2, &len);
  uint64_t *ranges = NULL, nr = 0;
  const uint8_t *pay = NULL;
  assert_int_equal(sr__ckpt_snapshot_parse(b, len, "s.bin", 400, raw, 3, &ranges, &nr, &pay),
                   SR_OK);
  assert_true(nr == 2 && ranges[0] == 0 && ranges[1] == 100 && ranges[2] == 300 && ranges[3] == 50);
  assert_true(pay == b + 24 + 32 && pay[99] == 99 && pay[100] == 100);
  free(ranges);
  /* Wrong file size, a raw extent that moved, a missing raw extent, a gap. */
  assert_int_equal(snap(b, len, 401, raw, 3), SR_ERR_IO);
  sr__extent moved[3] = {{SR_CK_OUT, 101, 200, 1}, raw[1], raw[2]};
  assert_int_equal(snap(b, len, 400, moved, 3), SR_ERR_IO);
  assert_int_equal(snap(b, len, 400, raw, 1), SR_ERR_IO);
  free(b);
  uint64_t gap[4] = {0, 90, 300, 50};
  b = image(400, gap, 2, &len);
  assert_int_equal(snap(b, len, 400, raw, 3), SR_ERR_IO);
  free(b);
  /* Every truncation and every single-byte change is refused. */
  b = image(400, rg, 2, &len);
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(snap(b, cut, 400, raw, 3), SR_ERR_IO);
  for (size_t i = 0; i < len; i++) {
    b[i] ^= 0x10;
    assert_int_equal(snap(b, len, 400, raw, 3), SR_ERR_IO);
    b[i] ^= 0x10;
  }
  assert_int_equal(snap(b, len, 400, raw, 3), SR_OK);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_xxh64),
      cmocka_unit_test(test_manifest),
      cmocka_unit_test(test_unit_file),
      cmocka_unit_test(test_snapshot),
  };
  return cmocka_run_group_tests_name("ckpt", tests, NULL, NULL);
}
