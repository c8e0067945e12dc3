/*
 * sr_affinity.c — how many CPUs this process may run on (its affinity mask), so that the
 * automatic thread count follows what the launcher granted (mpirun binds ranks to one core by
 * default when there are at most two of them).
 */
#define _GNU_SOURCE
#include "sr_internal.h"

#include <sched.h>

int sr__affinity_cpus(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return CPU_COUNT(&set);
}
