/*
 * sr_comm.c — world setup, status agreement across ranks, and the MPI transport.
 */
#include "sr_comm.h"
#include "sr_internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

sr_status sr__mpi_check(int rc, const char *what, const char *file, int line) {
  if (rc == MPI_SUCCESS) return SR_OK;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
  return sr__seterr(SR_ERR_MPI, "%s:%d: %s failed: %s", file, line, what, msg);
}

sr_status sr_world_init(sr_world *w, MPI_Comm comm) {
  *w = (sr_world){.comm = MPI_COMM_NULL, .node = MPI_COMM_NULL};
  SR_MPI(MPI_Comm_dup(comm, &w->comm));
  SR_MPI(MPI_Comm_set_errhandler(w->comm, MPI_ERRORS_RETURN));
  SR_MPI(MPI_Comm_rank(w->comm, &w->rank));
  SR_MPI(MPI_Comm_size(w->comm, &w->nranks));
  SR_MPI(MPI_Comm_split_type(w->comm, MPI_COMM_TYPE_SHARED, w->rank, MPI_INFO_NULL, &w->node));
  SR_MPI(MPI_Comm_rank(w->node, &w->local_rank));
  SR_MPI(MPI_Comm_size(w->node, &w->local_nranks));
  int len = 0;
  char name[MPI_MAX_PROCESSOR_NAME];
  if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS) snprintf(name, sizeof name, "?");
  snprintf(w->host, sizeof w->host, "%s", name);
  return SR_OK;
}

void sr_world_free(sr_world *w) {
  if (w->node != MPI_COMM_NULL) MPI_Comm_free(&w->node);
  if (w->comm != MPI_COMM_NULL) MPI_Comm_free(&w->comm);
}

sr_status sr_comm_agree(MPI_Comm comm, sr_status mine) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  /* The lowest failing rank speaks for everyone. */
  int failing = mine != SR_OK ? rank : INT_MAX, first = INT_MAX;
  if (MPI_Allreduce(&failing, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Allreduce failed while agreeing on a status");
  if (first == INT_MAX) return SR_OK;
  struct {
    int status;
    char msg[1000];
  } m = {0};
  m.status = (int)mine;
  snprintf(m.msg, sizeof m.msg, "%s", sr_last_error());
  if (MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first, comm) != MPI_SUCCESS)
    return sr__seterr(SR_ERR_MPI, "MPI_Bcast failed while agreeing on a status");
  if (m.msg[0] == '\0') snprintf(m.msg, sizeof m.msg, "rank %d failed: %s", first,
                                 sr_strerror((sr_status)m.status));
  return sr__seterr((sr_status)m.status, "%s", m.msg);
}

/* ---- MPI transport ---------------------------------------------------------------------- */

/* Two steps may be in flight (double buffering); requests are kept per step parity. */
typedef struct mpi_impl {
  MPI_Request req[2][2];
} mpi_impl;

/* Large messages are sent as MPI_FLOAT-free byte counts split into 1 GiB pieces would be
 * needed beyond INT_MAX; a contiguous derived type of 64 bytes keeps counts in range. */
static sr_status post_one(MPI_Request *req, bool is_send, void *buf, size_t bytes, int peer,
                          int tag, MPI_Comm comm) {
  *req = MPI_REQUEST_NULL;
  if (bytes == 0) return SR_OK;
  MPI_Datatype type = MPI_BYTE;
  size_t count = bytes;
  if (bytes % 64 == 0) {
    SR_MPI(MPI_Type_contiguous(64, MPI_BYTE, &type));
    SR_MPI(MPI_Type_commit(&type));
    count = bytes / 64;
  }
  if (count > INT_MAX) return sr__seterr(SR_ERR_SHAPE, "ring message of %zu bytes is too large", bytes);
  int rc = is_send ? MPI_Isend(buf, (int)count, type, peer, tag, comm, req)
                   : MPI_Irecv(buf, (int)count, type, peer, tag, comm, req);
  if (type != MPI_BYTE) MPI_Type_free(&type);
  return sr__mpi_check(rc, is_send ? "MPI_Isend" : "MPI_Irecv", __FILE__, __LINE__);
}

static sr_status mpi_step_post(sr_transport *t, int step, const void *sendbuf, size_t send_bytes,
                               int dst, void *recvbuf, size_t recv_bytes, int src) {
  mpi_impl *m = t->impl;
  MPI_Request *r = m->req[step & 1];
  int tag = 1000 + step;
  SR_TRY(post_one(&r[0], false, recvbuf, recv_bytes, src, tag, t->world->comm));
  SR_TRY(post_one(&r[1], true, (void *)sendbuf, send_bytes, dst, tag, t->world->comm));
  return SR_OK;
}

static sr_status mpi_step_wait(sr_transport *t, int step) {
  mpi_impl *m = t->impl;
  SR_MPI(MPI_Waitall(2, m->req[step & 1], MPI_STATUSES_IGNORE));
  return SR_OK;
}

static void mpi_destroy(sr_transport *t) {
  if (!t) return;
  sr__free(t->impl);
  sr__free(t);
}

sr_status sr_transport_mpi_create(const sr_world *w, sr_transport **out) {
  sr_transport *t = sr__calloc(1, sizeof *t);
  mpi_impl *m = sr__calloc(1, sizeof *m);
  if (!t || !m) {
    sr__free(t);
    sr__free(m);
    return sr__seterr(SR_ERR_NOMEM, "out of memory creating the MPI transport");
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) m->req[i][j] = MPI_REQUEST_NULL;
  t->name = "mpi";
  t->step_post = mpi_step_post;
  t->step_wait = mpi_step_wait;
  t->destroy = mpi_destroy;
  t->world = w;
  t->impl = m;
  *out = t;
  return SR_OK;
}
