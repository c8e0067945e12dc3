/*
 * sr_h5_internal.h — what sr_h5.c (output, errors, helpers) and sr_h5_in.c (input) share.
 * Not part of the library's interface. The invariants are those at the top of sr_h5.c.
 */
#ifndef SR_H5_INTERNAL_H
#define SR_H5_INTERNAL_H

#include "sr_h5.h"
#include "sr_internal.h"

#include <hdf5.h>

/* Switches HDF5's automatic error printing off (once per process). */
void sr__h5_setup_errors(void);
/* "<file>: <object>: <what> failed (HDF5: <detail>)" with status s; obj NULL for the file. */
sr_status sr__h5_fail(sr_status s, const char *file, const char *obj, const char *what);
/* An MPI failure (rc) while doing `what`. */
sr_status sr__h5_mpi_fail(int rc, const char *what);
/* Collective. Every rank passes its own status; all return the lowest (most severe) status and
 * the message of the lowest rank that reported it. */
sr_status sr__h5_agree(MPI_Comm comm, int rank, int nranks, sr_status st);
/* Duplicates comm (error handler returning codes) into *out with rank and size. */
sr_status sr__h5_comm_setup(MPI_Comm comm, MPI_Comm *out, int *rank, int *nranks);
/* "[a, b, c]" of a dataspace's dims; a type's class and size in words. */
void sr__h5_dims_str(char *buf, size_t len, int rank, const hsize_t *dims);
void sr__h5_dtype_str(hid_t t, char *buf, size_t len);
/* Selects the union of runs [start, start+run_len) over all heads (and all d when d > 0) of a
 * [heads][n] or [heads][n][d] dataspace; nothing when there are no runs. */
herr_t sr__h5_select_runs(hid_t space, int heads, int d, const int64_t *starts, int nruns,
                          int64_t run_len);
/* Checks that the runs are ascending, disjoint and inside [0, n). */
sr_status sr__h5_check_runs(const char *fname, const char *obj, int64_t n,
                            const int64_t *starts, int nruns, int64_t run_len);

#endif
