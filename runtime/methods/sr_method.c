/*
 * sr_method.c — the method table (sr_method.h).
 */
#include "sr_method.h"

static const sr_method_ops *const table[] = {
    [SR_METHOD_DENSE] = &sr_method_dense,
    [SR_METHOD_BLOCK_SPARSE] = &sr_method_block_sparse,
    [SR_METHOD_VERTICAL_SLASH] = &sr_method_vertical_slash,
    [SR_METHOD_FLEXPREFILL] = &sr_method_flexprefill,
};

const sr_method_ops *sr_method_get(sr_method m) {
  if ((unsigned)m >= sizeof table / sizeof table[0] || !table[m]) return &sr_method_dense;
  return table[m];
}
