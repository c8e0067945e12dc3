/*
 * sr_nccl.c — the NCCL transport: ring steps between device buffers, ordered against the CUDA
 * backend's compute stream with events, never with a host synchronisation per step.
 *
 * Bootstrap (the only one): rank 0 calls ncclGetUniqueId, every rank agrees that it is ready
 * (so nobody enters a collective a failed rank will not reach), the id is broadcast over
 * w->comm with MPI, and every rank calls ncclCommInitRank on the device the backend bound.
 * A warm-up exchange with every ring partner then opens NCCL's peer connections, so the first
 * layer's timings do not include them and a broken link fails here, where ranks agree on it.
 *
 * Streams and events. C is the backend's compute stream (every backend op runs on it,
 * sr_cuda.h); M is this transport's comm stream (non-blocking, highest priority so the NCCL
 * kernel is scheduled promptly beside long attention kernels). Per step parity b = step & 1:
 *   post(s):  record ready[b] on C; M waits ready[b]; group{ncclRecv, ncclSend} on M;
 *             record arrived[b] on M.
 *   wait(s):  C waits arrived[b].
 * The host returns at once from both.
 *
 * Why sr_ring_run's double buffers are race-free with these events. The ring issues, on the
 * host, post(1), fn(0), then for s = 1 .. P-1: wait(s), post(s+1), fn(s); in selected mode
 * post(s) is preceded by gather_s (C) into send[b]; dense mode sends kv_local at step 1 and
 * then forwards recv[(s-1)&1]. Step s + 2 reuses the buffers of step s (parity b):
 *  (a) nccl(s+2) receives into recv[b], which fn(s) reads on C. fn(s) was issued before
 *      post(s+2) recorded ready[b], and M waits ready[b] before nccl(s+2): the receive
 *      starts after fn(s) has finished.
 *  (b) recv[b] is also written by nccl(s) and, in dense mode, read by nccl(s+1) (forwarded);
 *      both precede nccl(s+2) on the same stream M, which runs them in order.
 *  (c) gather_{s+2} (C) overwrites send[b], which nccl(s) reads. gather_{s+2} is issued after
 *      wait(s+1) made C wait arrived[(s+1)&1], recorded on M after nccl(s+1), hence after
 *      nccl(s): the send has completed before the gather writes.
 *  (d) fn(s) reads recv[b] after C waited arrived[b] (wait(s) precedes fn(s) on the host).
 *  (e) nccl(s) sends what gather_s (or the layer's upload, dense step 1) wrote on C: ready[b]
 *      is recorded after them. A dense forward (s >= 2) sends recv[(s-1)&1], written by
 *      nccl(s-1) earlier on M.
 *  (f) Event reuse: cudaStreamWaitEvent captures the record made before the call. ready[b]
 *      is recorded and waited in the same post; arrived[b] recorded by post(s) is waited by
 *      wait(s), which the host issues before post(s+2) records it again. The transport
 *      checks that order (a post of parity b while step s of parity b was never waited is an
 *      internal error), because a violation would silently drop a dependency.
 *  (g) After the last wait(P-1), C has waited for the last operation on M, so the ring's
 *      closing be->sync() (C) also covers every transfer before buffers are freed; a layer's
 *      buffers are never touched by M again.
 * No deadlock: C only waits on events of steps already posted, M only on events recorded
 * before its own operations, and nccl(s) on one rank depends only on that rank's earlier
 * work, so by induction on s every rank's step s completes.
 *
 * Failure: after a failed post or wait (or an asynchronous NCCL error) the transport makes C
 * wait for everything issued on M, so the ring's be->sync() before freeing its buffers also
 * waits for transfers in flight (an asynchronous error aborts the communicator first, which
 * ends its kernels). Peer ranks still blocked in an NCCL kernel cannot be freed from here.
 *
 * NVLink multicast (NVLS) must stay off on shared hosts; send/recv never uses it, and the
 * transport sets NCCL_NVLS_ENABLE=0 before the first NCCL call of the process.
 */
#include "sr_comm.h"
#include "sr_internal.h"

/* The build defines SR_CUDA=1 for every file (cmake/cuda.cmake); sr_cuda.h defines SR_CUDA()
 * as its check macro. Drop the plain definition first so the header's replaces it quietly. */
#undef SR_CUDA
#include "sr_cuda.h"

#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_impl {
  ncclComm_t comm;         /* NULL until initialised, and after an abort             */
  cudaStream_t stream;     /* M: the comm stream (owned)                             */
  cudaStream_t compute;    /* C: the backend's compute stream (not owned)            */
  cudaEvent_t ready[2];    /* per parity: C's work issued before the post            */
  cudaEvent_t arrived[2];  /* per parity: both directions of the step done (on M)    */
  cudaEvent_t drained;     /* end of everything issued on M (error paths)            */
  bool pending[2];         /* per parity: posted and not yet waited                  */
  int pending_step[2];
  int device, rank, nranks;
} nccl_impl;

/* A failing NCCL call becomes SR_ERR_BACKEND: "file:line: rank r: call failed: reason (detail)".
 * NCCL's last-error text may hold newlines; the message stays one line. */
static sr_status nccl_check(ncclResult_t r, const nccl_impl *n, const char *what,
                            const char *file, int line) {
  if (r == ncclSuccess) return SR_OK;
  char detail[512] = "";
  const char *last = ncclGetLastError(n ? n->comm : NULL);
  if (last && *last) {
    snprintf(detail, sizeof detail, " (%s)", last);
    for (char *c = detail; *c; c++)
      if (*c == '\n' || *c == '\r') *c = ' ';
  }
  return sr__seterr(SR_ERR_BACKEND, "%s:%d: rank %d: %s failed: %s%s", file, line,
                    n ? n->rank : -1, what, ncclGetErrorString(r), detail);
}
#define SR_NCCL(n, call) SR_TRY(nccl_check((call), (n), #call, __FILE__, __LINE__))

/* The widest NCCL type that divides the message and its address (NCCL moves bytes either way;
 * a wider type keeps counts small and lets NCCL use its aligned copy paths). */
static ncclDataType_t wire_type(const void *p, size_t bytes, size_t *count) {
  uintptr_t a = (uintptr_t)p;
  if (bytes % 8 == 0 && a % 8 == 0) {
    *count = bytes / 8;
    return ncclUint64;
  }
  if (bytes % 4 == 0 && a % 4 == 0) {
    *count = bytes / 4;
    return ncclUint32;
  }
  *count = bytes;
  return ncclChar;
}

/* Ring buffers must be device memory of the bound device: a host pointer would fault inside
 * the NCCL kernel (an async error far from its cause) instead of failing here. */
static sr_status check_device_ptr(const nccl_impl *n, const void *p, const char *which) {
  struct cudaPointerAttributes at;
  SR_CUDA(cudaPointerGetAttributes(&at, p));
  if ((at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged) ||
      at.device != n->device)
    return sr__seterr(SR_ERR_INTERNAL, "%s:%d: rank %d: NCCL %s buffer %p is not memory of "
                      "device %d", __FILE__, __LINE__, n->rank, which, p, n->device);
  return SR_OK;
}

/* Error paths: make C wait for everything issued on M, so that the caller's backend sync
 * before freeing buffers covers transfers still in flight. Best effort (errors ignored: the
 * first error is the one reported). */
static void drain_into_compute(nccl_impl *n) {
  if (!n->stream) return;
  if (cudaEventRecord(n->drained, n->stream) == cudaSuccess)
    (void)cudaStreamWaitEvent(n->compute, n->drained, 0);
  (void)cudaGetLastError();
}

/* An asynchronous NCCL failure (a peer or link gone) leaves the communicator unusable: abort it,
 * which also ends its kernels still on M, so a later sync does not hang on this rank. */
static sr_status check_async(nccl_impl *n) {
  ncclResult_t ae = ncclSuccess;
  SR_NCCL(n, ncclCommGetAsyncError(n->comm, &ae));
  if (ae == ncclSuccess || ae == ncclInProgress) return SR_OK;
  sr_status st = nccl_check(ae, n, "NCCL communication (asynchronous error)", __FILE__, __LINE__);
  (void)ncclCommAbort(n->comm);
  n->comm = NULL;
  return st;
}

/* Both directions of one step as one NCCL group on M, after C's work issued so far. */
static sr_status post(nccl_impl *n, int par, const void *sendbuf, size_t send_bytes, int dst,
                      void *recvbuf, size_t recv_bytes, int src) {
  if (!n->comm)
    return sr__seterr(SR_ERR_BACKEND, "rank %d: the NCCL communicator was aborted after an "
                      "earlier error", n->rank);
  if (send_bytes && (dst < 0 || dst >= n->nranks))
    return sr__seterr(SR_ERR_INTERNAL, "%s:%d: ring destination %d of %d ranks", __FILE__,
                      __LINE__, dst, n->nranks);
  if (recv_bytes && (src < 0 || src >= n->nranks))
    return sr__seterr(SR_ERR_INTERNAL, "%s:%d: ring source %d of %d ranks", __FILE__, __LINE__,
                      src, n->nranks);
  if (send_bytes) SR_TRY(check_device_ptr(n, sendbuf, "send"));
  if (recv_bytes) SR_TRY(check_device_ptr(n, recvbuf, "receive"));
  SR_TRY(check_async(n));

  /* The receive may overwrite a buffer C read last; the send reads what C just gathered. */
  SR_CUDA(cudaEventRecord(n->ready[par], n->compute));
  SR_CUDA(cudaStreamWaitEvent(n->stream, n->ready[par], 0));

  /* Zero sizes post nothing; the group still completes (an empty group is a no-op). The group
   * must be closed even after a failed member, or the next group would nest in this one. */
  SR_NCCL(n, ncclGroupStart());
  sr_status st = SR_OK;
  size_t count = 0;
  if (recv_bytes) {
    ncclDataType_t ty = wire_type(recvbuf, recv_bytes, &count);
    st = nccl_check(ncclRecv(recvbuf, count, ty, src, n->comm, n->stream), n, "ncclRecv",
                    __FILE__, __LINE__);
  }
  if (st == SR_OK && send_bytes) {
    ncclDataType_t ty = wire_type(sendbuf, send_bytes, &count);
    st = nccl_check(ncclSend(sendbuf, count, ty, dst, n->comm, n->stream), n, "ncclSend",
                    __FILE__, __LINE__);
  }
  sr_status end = nccl_check(ncclGroupEnd(), n, "ncclGroupEnd", __FILE__, __LINE__);
  if (st == SR_OK) st = end;
  SR_TRY(st);
  SR_CUDA(cudaEventRecord(n->arrived[par], n->stream));
  return SR_OK;
}

static sr_status nccl_step_post(sr_transport *t, int step, const void *sendbuf,
                                size_t send_bytes, int dst, void *recvbuf, size_t recv_bytes,
                                int src) {
  nccl_impl *n = t->impl;
  const int par = step & 1;
  /* (f) in the header comment: re-recording arrived[par] before it was waited would lose the
   * dependency of the earlier step; that is a caller bug, reported rather than raced. */
  if (n->pending[par])
    return sr__seterr(SR_ERR_INTERNAL, "%s:%d: NCCL step %d posted while step %d of the same "
                      "parity was not waited", __FILE__, __LINE__, step, n->pending_step[par]);
  sr_status st = post(n, par, sendbuf, send_bytes, dst, recvbuf, recv_bytes, src);
  if (st != SR_OK) {
    drain_into_compute(n);
    return st;
  }
  n->pending[par] = true;
  n->pending_step[par] = step;
  return SR_OK;
}

static sr_status nccl_step_wait(sr_transport *t, int step) {
  nccl_impl *n = t->impl;
  const int par = step & 1;
  if (!n->pending[par] || n->pending_step[par] != step)
    return sr__seterr(SR_ERR_INTERNAL, "%s:%d: NCCL step %d waited but not posted", __FILE__,
                      __LINE__, step);
  n->pending[par] = false;
  /* A host-side query only: it reports failures NCCL noticed, it never blocks. */
  sr_status st = n->comm ? check_async(n) : SR_OK;
  if (st == SR_OK)
    st = sr__cuda_check(cudaStreamWaitEvent(n->compute, n->arrived[par], 0),
                        "cudaStreamWaitEvent(compute, arrived)", __FILE__, __LINE__);
  if (st != SR_OK) drain_into_compute(n);
  return st;
}

static void nccl_destroy(sr_transport *t) {
  if (!t) return;
  nccl_impl *n = t->impl;
  if (n) {
    if (n->comm) {
      ncclResult_t ae = ncclSuccess;
      if (ncclCommGetAsyncError(n->comm, &ae) != ncclSuccess ||
          (ae != ncclSuccess && ae != ncclInProgress)) {
        (void)ncclCommAbort(n->comm);
      } else {
        /* Everything on M has finished before the communicator's buffers go. */
        (void)cudaStreamSynchronize(n->stream);
        (void)ncclCommFinalize(n->comm);
        (void)ncclCommDestroy(n->comm);
      }
    }
    for (int i = 0; i < 2; i++) {
      if (n->ready[i]) (void)cudaEventDestroy(n->ready[i]);
      if (n->arrived[i]) (void)cudaEventDestroy(n->arrived[i]);
    }
    if (n->drained) (void)cudaEventDestroy(n->drained);
    if (n->stream) (void)cudaStreamDestroy(n->stream);
    (void)cudaGetLastError();
    sr__free(n);
  }
  sr__free(t);
}

/* Streams and events of this rank (local; no communication). */
static sr_status setup_local(nccl_impl *n) {
  int count = 0;
  SR_CUDA(cudaGetDeviceCount(&count));
  /* A bound backend has created its (non-blocking, so never NULL) compute stream; before
   * binding, the stream is NULL and the device number means nothing. */
  if (!n->compute || n->device < 0 || n->device >= count)
    return sr__seterr(SR_ERR_BACKEND, "rank %d: the NCCL transport needs the CUDA backend bound "
                      "to a device first (sr_backend_cuda)", n->rank);
  /* Two ranks on one GPU (more ranks per node than GPUs) are refused by ncclCommInitRank on
   * every rank ("Duplicate GPU detected"), so all ranks fail together and nobody hangs. */
  SR_CUDA(cudaSetDevice(n->device));
  int least = 0, greatest = 0;
  SR_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  SR_CUDA(cudaStreamCreateWithPriority(&n->stream, cudaStreamNonBlocking, greatest));
  for (int i = 0; i < 2; i++) {
    SR_CUDA(cudaEventCreateWithFlags(&n->ready[i], cudaEventDisableTiming));
    SR_CUDA(cudaEventCreateWithFlags(&n->arrived[i], cudaEventDisableTiming));
  }
  SR_CUDA(cudaEventCreateWithFlags(&n->drained, cudaEventDisableTiming));
  return SR_OK;
}

/* Opens the peer connections of every ring step (distance s = 1 .. P-1) with an 8-byte
 * message each, and waits for them: NCCL connects peers lazily, on their first operation. */
static sr_status warm_up(nccl_impl *n) {
  if (n->nranks < 2) return SR_OK;
  void *buf = NULL;
  SR_CUDA(cudaMalloc(&buf, 16));
  sr_status st = sr__cuda_check(cudaMemsetAsync(buf, 0, 16, n->stream), "cudaMemsetAsync",
                                __FILE__, __LINE__);
  for (int s = 1; st == SR_OK && s < n->nranks; s++) {
    int dst = (n->rank + s) % n->nranks, src = (n->rank - s + n->nranks) % n->nranks;
    st = nccl_check(ncclGroupStart(), n, "ncclGroupStart", __FILE__, __LINE__);
    if (st != SR_OK) break;
    sr_status a = nccl_check(ncclRecv((char *)buf + 8, 1, ncclUint64, src, n->comm, n->stream),
                             n, "ncclRecv (warm-up)", __FILE__, __LINE__);
    sr_status b = a != SR_OK ? a
                             : nccl_check(ncclSend(buf, 1, ncclUint64, dst, n->comm, n->stream),
                                          n, "ncclSend (warm-up)", __FILE__, __LINE__);
    st = nccl_check(ncclGroupEnd(), n, "ncclGroupEnd (warm-up)", __FILE__, __LINE__);
    if (b != SR_OK) st = b;
  }
  if (st == SR_OK)
    st = sr__cuda_check(cudaStreamSynchronize(n->stream), "cudaStreamSynchronize(warm-up)",
                        __FILE__, __LINE__);
  (void)cudaFree(buf);
  return st;
}

sr_status sr_transport_nccl_create(const sr_world *w, sr_transport **out) {
  *out = NULL;
  sr_transport *t = sr__calloc(1, sizeof *t);
  nccl_impl *n = sr__calloc(1, sizeof *n);
  sr_status st = SR_OK;
  if (!t || !n) {
    sr__free(t);
    sr__free(n);
    t = NULL;
    n = NULL;
    st = sr__seterr(SR_ERR_NOMEM, "out of memory creating the NCCL transport");
  } else {
    t->name = "nccl";
    t->step_post = nccl_step_post;
    t->step_wait = nccl_step_wait;
    t->destroy = nccl_destroy;
    t->world = w;
    t->impl = n;
    n->rank = w->rank;
    n->nranks = w->nranks;
    n->device = sr__cuda_device();
    n->compute = sr__cuda_compute_stream();
    /* Before the first NCCL call of the process (NCCL reads its environment once). */
    if (setenv("NCCL_NVLS_ENABLE", "0", 1) != 0)
      st = sr__seterr(SR_ERR_BACKEND, "rank %d: cannot set NCCL_NVLS_ENABLE=0", w->rank);
    if (st == SR_OK) st = setup_local(n);
  }

  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  if (st == SR_OK && w->rank == 0)
    st = nccl_check(ncclGetUniqueId(&id), n, "ncclGetUniqueId", __FILE__, __LINE__);
  /* Nobody enters the broadcast or the NCCL init (both collective) unless every rank can. */
  st = sr_comm_agree(w->comm, st);
  if (st == SR_OK)
    st = sr__mpi_check(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, w->comm),
                       "MPI_Bcast(ncclUniqueId)", __FILE__, __LINE__);
  if (st == SR_OK) {
    ncclComm_t c = NULL;
    st = nccl_check(ncclCommInitRank(&c, w->nranks, id, w->rank), n, "ncclCommInitRank",
                    __FILE__, __LINE__);
    if (st == SR_OK) n->comm = c;
  }
  if (st == SR_OK) st = warm_up(n);
  if (st != SR_OK) {
    nccl_destroy(t);
    return st;
  }
  *out = t;
  return SR_OK;
}
