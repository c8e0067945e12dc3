/*
 * sr_cuda.h — what the CUDA backend shares with the NCCL transport (host C, not installed).
 *
 * The backend owns one compute stream per process; every backend op is issued on it. The
 * NCCL transport orders its communication stream against it with events (never a host
 * synchronisation per ring step): a receive into a buffer waits for the compute that last read
 * that buffer, and compute on an arrived buffer waits for its receive.
 */
#ifndef SR_CUDA_H
#define SR_CUDA_H

#include "sparsering.h"

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The backend's compute stream (valid after sr_backend_cuda() succeeded). */
cudaStream_t sr__cuda_compute_stream(void);
/* The device this rank is bound to (valid after sr_backend_cuda() succeeded). */
int sr__cuda_device(void);

/* A failing CUDA call becomes SR_ERR_BACKEND with "file:line: what: cudaGetErrorString". */
sr_status sr__cuda_check(cudaError_t e, const char *what, const char *file, int line);
#define SR_CUDA(call) SR_TRY(sr__cuda_check((call), #call, __FILE__, __LINE__))

#ifdef __cplusplus
}
#endif
#endif
