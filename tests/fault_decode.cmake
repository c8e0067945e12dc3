# Decode runs under faults (tests/fault_decode.sh, label `fault`): kill -9 at the middle decode
# step of a layer (SR_TEST_CRASH=decode_mid:L[:R], docs/CHECKPOINT.md "Test hooks") on every
# rank or one, then --resume: byte-identical to an uninterrupted run. fault_decode: quest, and
# two uninterrupted runs byte-identical; fault_decode_snapkv: the crashes with snapkv;
# fault_decode_signal: SIGTERM while held at decode_mid:1 stops at the layer boundary (exit 75)
# and the resume is identical.
# sr_fault_test comes from tests/fault.cmake (included before this file).
sr_fault_test(fault_decode fault_decode.sh quest)
sr_fault_test(fault_decode_snapkv fault_decode.sh snapkv)
sr_fault_test(fault_decode_signal fault_decode.sh signal)
