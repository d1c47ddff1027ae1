#!/usr/bin/env bash
# Install what compass-pilot and its test suite need on a fresh Debian machine (run as root).
# Real servers only: MariaDB (calibration DB), XRootD (stage-in/out), Slurm + munge (batch path),
# MPICH via the mpich wheel (node agents). Idempotent: re-running installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs=(mariadb-server-core mariadb-client slurmctld slurmd slurm-client munge xrootd-server xrootd-client
      iproute2 util-linux openssl procps
      chromium fonts-dejavu-core)  # chromium: the monitor page rendered headless in CI (tests/operator)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# slurm-wlm-torque (qsub/qstat/qdel over Slurm, for the PBS path's tests) also registers its srun-based
# mpiexec/mpirun as /usr/bin alternatives: drop them, the node agents' MPI is the mpich wheel's hydra
for alt in mpiexec mpirun; do
  update-alternatives --remove "$alt" /usr/bin/mpiexec.slurm >/dev/null 2>&1 || true
done
python3 -m pip install -q -e '.[mpi,saga,mysql,test]'
# the real PanDA pilot 3.7.0.36 (PyPI sdist) that tests/pilot3 runs against our dispatcher
pilot_cache="${COMPASS_PILOT_CACHE:-$HOME/.cache/compass-pilot}"
if [ ! -f "$pilot_cache/panda-pilot-3.7.0.36.tar.gz" ]; then
  mkdir -p "$pilot_cache"
  python3 -m pip download -q --no-deps --no-binary :all: panda-pilot==3.7.0.36 -d "$pilot_cache"
fi
