# Sourced by the job scripts: lets Open MPI run as root (containers, CI) and place more ranks
# than cores on small machines. Harmless for a normal user.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
