# CUDA backend against the CPU backend, every op (test_gpu_backend.c). Built in every
# configuration; it exits 77 (reported as skipped) where sr_backend_cuda() finds no usable
# device: on CI, and in builds without SR_CUDA. It shares the `gpu` resource lock with the
# other GPU tests (tests/gpu_mpi.cmake), so `ctest -j` never runs two of them at once.
sr_unit_test(test_gpu_backend SOURCES test_gpu_backend.c LABELS gpu TIMEOUT 300)
set_tests_properties(test_gpu_backend PROPERTIES RESOURCE_LOCK gpu)
# The decode ops of the CUDA backend against float64 and the CPU backend (test_gpu_decode.c),
# with the time of decode_fwd at 128K tokens printed; skipped (77) without a usable device.
sr_unit_test(test_gpu_decode SOURCES test_gpu_decode.c LABELS gpu TIMEOUT 300)
set_tests_properties(test_gpu_decode PROPERTIES RESOURCE_LOCK gpu)
# Work lists built on the device (attn_lists) against a host split, and attention on them
# bit-identical to attention on host lists (test_gpu_lists.c); skipped (77) without a device.
sr_unit_test(test_gpu_lists SOURCES test_gpu_lists.c LABELS gpu TIMEOUT 300)
set_tests_properties(test_gpu_lists PROPERTIES RESOURCE_LOCK gpu)
