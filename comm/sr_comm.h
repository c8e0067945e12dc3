/*
 * sr_comm.h — the MPI world of a run and the transport table.
 *
 * Agreement rule: a rank that fails must never leave its peers blocked in a collective. Every
 * phase that can fail on some ranks only ends with sr_comm_agree(), which combines the status
 * of all ranks (the lowest failing rank's status and message win, on every rank) before the
 * next collective is entered. main() then prints the message once, from rank 0.
 *
 * The transport table moves bulk KV data: the ring-shift steps, in backend memory (host
 * buffers for the MPI transport, device buffers for NCCL). Everything small and host-side
 * (key-block summaries, request lists, metrics, status) travels over MPI on `world->comm`.
 */
#ifndef SR_COMM_H
#define SR_COMM_H

#include "sparsering.h"

#include <mpi.h>
#include <stddef.h>

typedef struct sr_world {
  MPI_Comm comm;        /* duplicate of the caller's communicator, MPI_ERRORS_RETURN */
  int rank, nranks;
  MPI_Comm node;        /* ranks on the same node (MPI_Comm_split_type SHARED)       */
  int local_rank, local_nranks;
  char host[MPI_MAX_PROCESSOR_NAME];
} sr_world;

/* Duplicates `comm`, sets MPI_ERRORS_RETURN, finds the node-local rank. Collective. */
sr_status sr_world_init(sr_world *w, MPI_Comm comm);
void sr_world_free(sr_world *w);

/* Collective. Combines every rank's status: returns SR_OK if all are OK; otherwise the status of
 * the lowest failing rank, whose sr_last_error() message is copied to every rank. */
sr_status sr_comm_agree(MPI_Comm comm, sr_status mine);

/* Wraps an MPI call: a failure becomes SR_ERR_MPI with the MPI error string and file:line. */
sr_status sr__mpi_check(int rc, const char *what, const char *file, int line);
#define SR_MPI(call) SR_TRY(sr__mpi_check((call), #call, __FILE__, __LINE__))

/* ---- transport table ------------------------------------------------------------------- */
typedef struct sr_transport sr_transport;
struct sr_transport {
  const char *name;
  /* Posts ring step `step` (any small integer; two steps may be in flight): send send_bytes
   * to dst and receive recv_bytes from src. Either size may be 0 (nothing posted for it). */
  sr_status (*step_post)(sr_transport *t, int step, const void *sendbuf, size_t send_bytes,
                         int dst, void *recvbuf, size_t recv_bytes, int src);
  /* Waits for both directions of a posted step. */
  sr_status (*step_wait)(sr_transport *t, int step);
  void (*destroy)(sr_transport *t);
  const sr_world *world;
  void *impl;
};

/* The MPI transport (host buffers, nonblocking point-to-point). */
sr_status sr_transport_mpi_create(const sr_world *w, sr_transport **t);
/* The NCCL transport (device buffers; SR_CUDA builds only; needs the CUDA backend bound first):
 * communicator bootstrapped from an ncclUniqueId broadcast over w->comm. Collective. */
sr_status sr_transport_nccl_create(const sr_world *w, sr_transport **t);

#endif
