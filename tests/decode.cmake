# Decode rules (runtime/decode/sr_decode.h: SnapKV / Ada-SnapKV choice, global top-k merge,
# budgets) and the CPU backend's decode ops (decode_fwd, page_minmax, page_scores, page_topk,
# est_colmax), each against a naive float64 / integer reference on fresh random inputs.
sr_unit_test(test_decode SOURCES test_decode.c LABELS decode TIMEOUT 120)
