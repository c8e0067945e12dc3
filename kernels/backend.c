/*
 * backend.c — backend lookup that does not depend on which backends were compiled in.
 * When the CUDA backend is not built, sr_backend_cuda() says so (backend: auto then falls back
 * to the CPU; backend: cuda is an error naming the reason).
 */
#include "kernels.h"
#include "sr_internal.h"

#ifndef SR_CUDA
const sr_backend *sr_backend_cuda(int local_rank) {
  (void)local_rank;
  sr__seterr(SR_ERR_BACKEND, "backend cuda: this sparsering was built without CUDA "
                             "(configure with nvcc available, -DSR_CUDA=ON)");
  return NULL;
}
#endif
