/*
 * fuzz_config.c — libFuzzer target for the config parser (runtime/sr_config_load.c).
 *
 * Input: YAML text, then optionally NUL-separated `--set` overrides ("key=value"), at most 8.
 * Properties checked on every input (a violation aborts, which the fuzzer reports):
 *   - a refusal is SR_ERR_CONFIG / SR_ERR_NOMEM with one non-empty line naming the file or
 *     "--set";
 *   - an accepted config validates, and its effective YAML loads back to the same YAML (the
 *     round trip CONFIG.md promises), with the same hash and result hash.
 */
#include "sr_config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "fuzz_config: property violated: %s (message: %s)\n", #c, sr_last_error());  \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Split: text up to the first NUL, then overrides. */
  char *buf = malloc(size + 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  size_t ylen = strnlen(buf, size);
  const char *over[8];
  int n = 0;
  for (size_t at = ylen + 1; at < size && n < 8; at += strlen(buf + at) + 1)
    over[n++] = buf + at;

  sr_config c;
  sr_status st = sr_config_load_string(&c, buf, ylen, "fuzz.yaml", over, n);
  const char *msg = sr_last_error();
  if (st != SR_OK) {
    CHECK(st == SR_ERR_CONFIG || st == SR_ERR_NOMEM);
    CHECK(msg[0] != '\0' && strchr(msg, '\n') == NULL);
    CHECK(strncmp(msg, "fuzz.yaml", 9) == 0 || strncmp(msg, "--set ", 6) == 0 ||
          st == SR_ERR_NOMEM);
  } else {
    CHECK(sr_config_validate(&c) == SR_OK);
    char *y1 = sr_config_to_yaml(&c);
    CHECK(y1 != NULL);
    sr_config d;
    CHECK(sr_config_load_string(&d, y1, strlen(y1), "effective", NULL, 0) == SR_OK);
    char *y2 = sr_config_to_yaml(&d);
    CHECK(y2 != NULL && strcmp(y1, y2) == 0);
    CHECK(sr_config_hash(&c) == sr_config_hash(&d));
    CHECK(sr_config_result_hash(&c) == sr_config_result_hash(&d));
    free(y2);
    free(y1);
    sr_config_free(&d);
  }
  sr_config_free(&c);
  free(buf);
  return 0;
}
