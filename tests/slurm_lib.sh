# tests/slurm_lib.sh — sourced by tests/fault_slurm.sh and tests/twonode_slurm.sh: the parts of
# a test's own Slurm that do not depend on its nodes. The caller sets S (its Slurm folder) and
# K (a short folder for Unix sockets, see slurm_sockdir), keeps the PIDs it starts in pids, and
# stops them on exit.

# slurm_sockdir PREFIX: makes K, a short directory in /tmp for munged's socket and the slurmd
# spools (slurmd's and slurmstepd's sockets). A Unix socket path cannot pass 108 bytes, and a
# build tree can lie deep: slurmstepd then dies at launch and slurmctld requeues the job
# without a word in its own log.
slurm_sockdir() {
  K=$(mktemp -d "/tmp/$1.XXXXXX") || return 1
  chmod 755 "$K" && chown munge:munge "$K"
}

# slurm_munged: our own munged on $K/munge.socket (a system munged is left alone); sets sock.
# Returns non-zero when it does not start.
slurm_munged() {
  mkdir -p /run/munge && chown munge:munge /run/munge "$S" || return 1
  sock=$K/munge.socket
  runuser -u munge -- munged --socket="$sock" --pid-file="$S/munged.pid" \
    --log-file="$S/munged.log" --seed-file="$S/munged.seed" || return 1
  pids+=("$(cat "$S/munged.pid")")
}

# slurm_conf_common: the slurm.conf lines both tests share (munge auth, no cgroups, cores as
# the unit, a text job-completion log).
slurm_conf_common() {
  cat <<EOC
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$S/jobcomp.txt
ReturnToService=2
StateSaveLocation=$S/state
EOC
}
