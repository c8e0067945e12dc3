/*
 * fuzz_ckpt.c — libFuzzer target for the checkpoint's parsers (runtime/sr_ckpt.c): the
 * manifest, a unit file, a snapshot image. These read files a resume must not trust.
 *
 * Input: byte 0 picks the parser (mod 3); the rest is the file. For a snapshot, 8 more bytes
 * give the file size (mod 1 MiB) and one byte a count of raw extents (mod 5), each from 4 bytes
 * (offset and length, 16 bits each), before the image.
 * Properties: no crash or sanitizer report; a refusal is SR_ERR_IO (or NOMEM) with one line
 * naming the file; an accepted snapshot's ranges lie inside the file, in order, and its payload
 * inside the image.
 */
#include "sr_ckpt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_ckpt: property violated: %s (message: %s)\n", #c, sr_last_error());    \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static void refusal(sr_status st, const char *name) {
  const char *msg = sr_last_error();
  CHECK(st == SR_ERR_IO || st == SR_ERR_NOMEM);
  CHECK(strchr(msg, '\n') == NULL && strstr(msg, name) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int which = data[0] % 3;
  data++;
  size--;
  /* An exact-size copy: the parsers must not read past len (ASan sees it). */
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  if (which == 0) {
    sr__manifest m;
    sr_status st = sr__ckpt_manifest_parse((const char *)buf, size, "fuzz/manifest.json", &m);
    if (st == SR_OK) {
      CHECK(m.units_done >= 1 && m.units_done <= m.layers && m.ranks >= 1);
      CHECK(m.unit_hash != NULL && m.config_yaml != NULL && m.result_yaml != NULL);
      CHECK(m.seq_len % m.block_q == 0);
      sr__manifest_free(&m);
    } else {
      refusal(st, "fuzz/manifest.json");
    }
  } else if (which == 1) {
    sr__extent ext[SR_CK_N];
    int n = -1;
    uint64_t sum = 0;
    char *metrics = NULL;
    int layer = size > 0 ? buf[0] % 4 : 0;
    sr_status st = sr__ckpt_unit_parse((const char *)buf, size, "fuzz/unit.json", layer, ext, &n,
                                       &sum, &metrics);
    if (st == SR_OK) {
      CHECK(n >= 0 && n <= SR_CK_N);
      unsigned seen = 0;
      for (int i = 0; i < n; i++) {
        CHECK(ext[i].kind >= 0 && ext[i].kind < SR_CK_N && !(seen & (1u << ext[i].kind)));
        seen |= 1u << ext[i].kind;
      }
      free(metrics);
    } else {
      refusal(st, "fuzz/unit.json");
      CHECK(metrics == NULL && n == 0);
    }
  } else {
    if (size < 9) {
      free(buf);
      return 0;
    }
    uint64_t fb = 0;
    for (int b = 0; b < 8; b++)
      fb |= (uint64_t)buf[b] << (8 * b);
    fb %= 1u << 20;
    int nraw = buf[8] % 5;
    size_t at = 9;
    sr__extent raw[4];
    for (int i = 0; i < nraw; i++) {
      uint16_t o = 0, l = 0;
      if (at + 4 <= size) {
        o = (uint16_t)(buf[at] | buf[at + 1] << 8);
        l = (uint16_t)(buf[at + 2] | buf[at + 3] << 8);
        at += 4;
      }
      raw[i] = (sr__extent){.kind = i % SR_CK_N, .offset = o, .bytes = l};
    }
    uint64_t *ranges = NULL, nr = 0;
    const uint8_t *pay = NULL;
    sr_status st = sr__ckpt_snapshot_parse(buf + at, size - at, "fuzz/snap.bin", fb, raw, nraw,
                                           &ranges, &nr, &pay);
    if (st == SR_OK) {
      uint64_t prev = 0, total = 0;
      for (uint64_t i = 0; i < nr; i++) {
        CHECK(ranges[2 * i] >= prev && ranges[2 * i + 1] > 0);
        CHECK(ranges[2 * i] + ranges[2 * i + 1] <= fb);
        prev = ranges[2 * i] + ranges[2 * i + 1];
        total += ranges[2 * i + 1];
      }
      CHECK(pay >= buf + at && pay + total + 8 == buf + size);
      free(ranges);
    } else {
      refusal(st, "fuzz/snap.bin");
    }
  }
  free(buf);
  return 0;
}
