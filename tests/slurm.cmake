# The Slurm job scripts (jobs/*.sbatch) run from a directory outside the repository, without
# Slurm (stand-in scontrol and srun): home discovery, outputs, launcher selection (label
# `fault`, like the requeue tests in fault.cmake; docs/SLURM.md). Included after fault.cmake.
sr_fault_test(slurm_anydir slurm_anydir.sh)
