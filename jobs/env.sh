# Sourced by the job scripts: lets Open MPI run as root (containers, CI) and place more ranks
# than cores on small machines. Harmless for a normal user.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}

# The rest only defines functions, for the Slurm scripts (jobs/*.sbatch, docs/SLURM.md); they
# expect SR_HOME (the directory holding jobs/ and build/) to be set by the caller.

# sr_slurm_setup: the binary, the output directory, the launcher with explicit ranks per node
# and binding. Sets SR_BIN, SR_OUT, SR_ID and the array SR_LAUNCH_CMD; prints nothing.
#   SPARSERING           the binary (default <home>/build/sparsering; a relative path is taken
#                        from the submission directory if it exists there, else from <home>)
#   SPARSERING_OUT_DIR   JSON report and a copy of the job log (default: submission directory)
#   SPARSERING_LAUNCHER  mpirun (default) or srun (srun --mpi=pmix)
#   SPARSERING_MPIRUN    the mpirun to use (default mpirun)
#   SPARSERING_BIND      core (default: each rank bound to its share of the cores) or none
#   SR_LAUNCH            a whole launcher command, used as given (kept from earlier versions)
sr_slurm_setup() {
  SR_ID=${SLURM_JOB_ID:-local}
  SR_BIN=${SPARSERING:-$SR_HOME/build/sparsering}
  case $SR_BIN in
  /*) ;;
  *) [ -e "$SR_BIN" ] && SR_BIN=$PWD/$SR_BIN || SR_BIN=$SR_HOME/$SR_BIN ;;
  esac
  SR_OUT=${SPARSERING_OUT_DIR:-$PWD}
  mkdir -p "$SR_OUT" && SR_OUT=$(cd "$SR_OUT" && pwd) || return 1

  # Ranks per node: --ntasks-per-node, else Slurm's SLURM_TASKS_PER_NODE ("4(x2)", or "3,2"
  # when uneven). Outside Slurm (a test, a run by hand): SLURM_NTASKS ranks (default 1) here.
  SR_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  SR_NTASKS=${SLURM_NTASKS:-${SLURM_NPROCS:-1}}
  local tpn=${SLURM_TASKS_PER_NODE:-}
  SR_PPN=${SLURM_NTASKS_PER_NODE:-}
  if [ -z "$SR_PPN" ]; then
    case $tpn in
    "") SR_PPN=$(((SR_NTASKS + SR_NODES - 1) / SR_NODES)) ;;
    *,*) SR_PPN= ;; # uneven: the launcher follows Slurm's layout
    *) SR_PPN=${tpn%%(*} ;;
    esac
  fi

  # Cores per rank: --cpus-per-task if given, else the node's allocated CPUs divided among its
  # ranks; CPUs are hardware threads, mpirun's PE counts cores.
  local tpc cpus
  tpc=$(lscpu 2>/dev/null | sed -n 's/^Thread(s) per core: *//p')
  [[ $tpc =~ ^[1-9][0-9]*$ ]] || tpc=1
  cpus=${SLURM_CPUS_ON_NODE:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    SR_CPT=$SLURM_CPUS_PER_TASK
  else
    local here=${SR_PPN:-${tpn%%[(,]*}} # uneven: this (the first) node's ranks
    SR_CPT=$((cpus / here))
  fi
  SR_PE=$((SR_CPT / tpc))
  SR_BIND=${SPARSERING_BIND:-core}
  SR_BIND_WHY="$SR_PE cores per rank"
  if [ "$SR_BIND" = core ] && [ "$SR_PE" -lt 1 ]; then
    SR_BIND=none
    SR_BIND_WHY="fewer cores ($cpus CPUs) than ranks on the node: not bound"
  fi
  [ "$SR_BIND" = none ] && [ -n "${SPARSERING_BIND:-}" ] && SR_BIND_WHY="SPARSERING_BIND=none"

  SR_LAUNCHER=${SPARSERING_LAUNCHER:-mpirun}
  if [ -n "${SR_LAUNCH:-}" ]; then
    read -r -a SR_LAUNCH_CMD <<<"$SR_LAUNCH"
    SR_LAUNCHER="SR_LAUNCH"
    SR_BIND_WHY="as SR_LAUNCH says"
    return 0
  fi
  case $SR_LAUNCHER in
  mpirun)
    SR_LAUNCH_CMD=("${SPARSERING_MPIRUN:-mpirun}")
    local map
    if [ -n "$SR_PPN" ]; then map=ppr:$SR_PPN:node; else
      map=slot
      SR_LAUNCH_CMD+=(-np "$SR_NTASKS")
    fi
    if [ "$SR_BIND" = core ]; then
      SR_LAUNCH_CMD+=(--map-by "$map:PE=$SR_PE" --bind-to core)
    else
      SR_LAUNCH_CMD+=(--map-by "$map" --bind-to none)
    fi
    ;;
  srun)
    SR_LAUNCH_CMD=(srun --mpi=pmix --kill-on-bad-exit=1)
    [ -n "$SR_PPN" ] && SR_LAUNCH_CMD+=(--ntasks="$SR_NTASKS" --ntasks-per-node="$SR_PPN")
    if [ "$SR_BIND" = core ]; then
      SR_LAUNCH_CMD+=(--cpus-per-task="$SR_CPT" --cpu-bind=cores)
    else
      SR_LAUNCH_CMD+=(--cpu-bind=none)
    fi
    ;;
  *)
    echo "sparsering job: SPARSERING_LAUNCHER=$SR_LAUNCHER: expected mpirun or srun" >&2
    return 2
    ;;
  esac
}

# sr_slurm_header HOW: the '#' header at the start of a job's log (HOW: how home was found).
sr_slurm_header() {
  local ppn=${SR_PPN:-${SLURM_TASKS_PER_NODE:-?} (uneven)}
  echo "# sparsering job $SR_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"
  echo "# nodes: $SR_NODES (${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-this host}}), ranks: $SR_NTASKS, ranks per node: $ppn"
  echo "# home: $SR_HOME ($1)"
  echo "# binary: $SR_BIN"
  echo "# launcher: $SR_LAUNCHER: ${SR_LAUNCH_CMD[*]}"
  echo "# binding: $SR_BIND ($SR_BIND_WHY)"
  local gpus=${CUDA_VISIBLE_DEVICES:-} n=0
  [ -n "$gpus" ] && n=$(echo "$gpus" | tr ',' '\n' | grep -c .)
  if [ -n "${SLURM_GPUS_PER_TASK:-}" ]; then
    echo "# GPUs per rank: $SLURM_GPUS_PER_TASK (--gpus-per-task; CUDA_VISIBLE_DEVICES=${gpus:-unset} on the batch node)"
  elif [ -n "$gpus" ]; then
    echo "# GPUs: $n visible per node (CUDA_VISIBLE_DEVICES=$gpus); each rank takes node-local rank mod $n"
    if [ -n "$SR_PPN" ] && [ "$n" -lt "$SR_PPN" ]; then
      echo "# warning: $n GPUs for $SR_PPN ranks per node (two ranks on one GPU fail at start)"
    fi
  fi
  echo "# output: $SR_OUT"
}

# sr_log_copy FILE: from here on, this shell's stdout and stderr also go to FILE (appended).
# The copy ignores the job's signals (the batch shell handles them); sr_log_close waits for it.
sr_log_copy() {
  exec > >(trap '' TERM INT USR1 USR2 HUP; exec tee -a "$1") 2>&1
  SR_TEE_PID=$!
}
sr_log_close() {
  [ -n "${SR_TEE_PID:-}" ] || return 0
  exec >&- 2>&-
  wait "$SR_TEE_PID" 2>/dev/null
}
