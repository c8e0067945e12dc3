#!/usr/bin/env bash
# jobs/gpu/stage-deps.sh [DEST] — stage the MPI and HDF5 stack sparsering needs into one folder,
# for a GPU node that has a driver, the CUDA toolkit and NCCL but no parallel HDF5 (or no MPI
# that goes with it) and no package manager you can use.
#
# Run it on a Debian 12 (bookworm) x86_64 machine with apt access; it needs no GPU. It downloads
# Debian's Open MPI (4.1.4), parallel HDF5 (1.10.8, the openmpi flavour), libcyaml, cJSON and
# cmocka, runtime libraries and headers, with the libraries they load, and unpacks them into
# DEST (default: .gpudeps/ in the repository root, ignored by git; about 35-40 MB). Nothing is
# installed on the machine itself.
#
#   jobs/gpu/stage-deps.sh                 # -> .gpudeps/
#   EXTRA_DEBS="pkg ..." jobs/gpu/stage-deps.sh /scratch/me/sr-deps
#
# Then copy the repository (with .gpudeps/ and your build, see jobs/gpu/build.sh) to the GPU
# node and, from the repository root there:
#
#   source .gpudeps/env.sh
#
# env.sh puts the staged tree first (OPAL_PREFIX, PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH,
# PKG_CONFIG_PATH, MPI_HOME, the HDF5 compiler wrapper for CMake), lets mpirun run as root
# (containers), turns NVLink SHARP / multicast off for NCCL (NCCL_NVLS_ENABLE=0: sparsering only
# uses send/recv), and exports SR_MPI_INC / SR_HDF5_INC (the include folders) for builds made
# against the staged tree. Its mpirun is a wrapper that runs the staged launcher and forwards
# LD_LIBRARY_PATH, OPAL_PREFIX and NCCL_NVLS_ENABLE to the ranks.
#
# Known to work: Debian 12's packages on an Ubuntu 24.04 node with two NVLinked H200s (mpirun
# -np 2, NCCL over NVLink, collective parallel HDF5 writes). Do not mix the node's own mpirun
# (e.g. /usr/bin/mpirun) with these libraries: its PMIx does not match them. Use the staged one,
# which env.sh puts first on PATH. The staged tree is for single-node runs; across nodes every
# node must see the same path (a shared file system).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest=${1:-$top/.gpudeps}
case $dest in /*) ;; *) dest=$PWD/$dest ;; esac
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "stage-deps: needs apt-get and dpkg (a Debian 12 machine)" >&2
  exit 1
fi
pkgs="openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15 libhwloc-plugins
 libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libibverbs1 librdmacm1 libnl-3-200
 libnl-route-3-200 libnuma1 libpsm-infinipath1 libpsm2-2 libucx0 libxnvctrl0 libmunge2 libpciaccess0
 libhdf5-openmpi-103-1 libhdf5-openmpi-hl-100 libhdf5-openmpi-dev libaec0 libsz2 libcurl4 libnghttp2-14 librtmp1 libssh2-1
 libpsl5 libldap-2.5-0 libsasl2-2 libsasl2-modules-db libbrotli1 libunistring2 libidn2-0
 libcyaml1 libcyaml-dev libyaml-0-2 libyaml-dev libcjson1 libcjson-dev libcmocka0 libcmocka-dev ${EXTRA_DEBS:-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Package lists are needed once; refreshing them needs root.
if [ -z "$(ls /var/lib/apt/lists 2>/dev/null | head -1)" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "stage-deps: no apt package lists; run 'sudo apt-get update' first" >&2; exit 1; }
  apt-get update -qq
fi
# shellcheck disable=SC2086
(cd "$work" && apt-get download -qq $pkgs 2>&1 | grep -v "unsandboxed" || true)
ls "$work"/*.deb >/dev/null 2>&1 || { echo "stage-deps: apt-get download fetched nothing" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
for f in "$work"/*.deb; do dpkg -x "$f" "$dest"; done
L=$dest/usr/lib/x86_64-linux-gnu
# Drop what a run never needs, to keep the staged tree small (about 35 MB).
find "$dest" -name '*.a' -delete
rm -rf "$dest"/usr/share/doc "$dest"/usr/share/man "$L"/fortran "$L"/*fortran* "$L"/libgfortran*
ln -sf libmpi.so.40 "$L/libmpi.so"
# The HDF5 compiler wrapper hard-codes /usr: make it find the tree it sits in (CMake's FindHDF5 runs it).
sed -i 's|^prefix="/usr"|prefix="$(cd "$(dirname "$0")/.." \&\& pwd)"|' "$dest/usr/bin/h5pcc.openmpi"
ln -sf h5pcc.openmpi "$dest/usr/bin/h5pcc"
ln -sf mpicc.openmpi "$dest/usr/bin/mpicc"
cat >"$dest/env.sh" <<'ENV'
# sparsering's staged Open MPI + parallel HDF5 (jobs/gpu/stage-deps.sh): source it, e.g. from
# the repository root:  source .gpudeps/env.sh
_d=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OPAL_PREFIX=$_d/usr
export PATH=$_d/usr/bin:$PATH
export LD_LIBRARY_PATH=$_d/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CMAKE_PREFIX_PATH=$_d/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
export PKG_CONFIG_PATH=$_d/usr/lib/x86_64-linux-gnu/pkgconfig:$_d/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export MPI_HOME=$_d/usr HDF5_C_COMPILER_EXECUTABLE=$_d/usr/bin/h5pcc HDF5_USE_SHLIB=yes
export SR_MPI_INC=$_d/usr/lib/x86_64-linux-gnu/openmpi/include
export SR_HDF5_INC=$_d/usr/include/hdf5/openmpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PMIX_MCA_pcompress_base_silence_warning=1
export NCCL_NVLS_ENABLE=0
ENV
# mpirun/mpiexec in the staged tree are links to /etc/alternatives: replace them with a wrapper
# that runs the staged launcher and forwards the environment the ranks need.
for m in mpirun mpiexec; do
  rm -f "$dest/usr/bin/$m"
  printf '#!/bin/sh\nexec "$OPAL_PREFIX/bin/orterun" -x LD_LIBRARY_PATH -x OPAL_PREFIX -x NCCL_NVLS_ENABLE "$@"\n' >"$dest/usr/bin/$m"
  chmod +x "$dest/usr/bin/$m"
done
# A folder inside the repository other than .gpudeps/ (which .gitignore covers): keep git from
# listing it.
rel=${dest#"$top"/}
if [ "$rel" != "$dest" ] && [ "$rel" != .gpudeps ] && [ -d "$top/.git/info" ]; then
  grep -qxF "/$rel/" "$top/.git/info/exclude" 2>/dev/null || echo "/$rel/" >>"$top/.git/info/exclude"
fi
echo "staged $(du -sh "$dest" | cut -f1) into $dest; on the GPU node: source $dest/env.sh" \
  "(or its copy there)"
