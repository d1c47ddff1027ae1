#!/bin/sh
# A fresh ext4 file system in RAM for benchmark runs: TMPDIR=/mnt/bench python benchmarks/e2e.py ...
#
# Why: ext4's inode allocator skips inodes freed in the last minutes (recently_deleted), so a run
# that follows other file churn on the same file system (earlier runs: ~6,000 files each) pays up to
# a quarter of its CPU there: the same e2e run measured 10-14 CPU-s on this box's /tmp and 7.5-9 on
# a fresh file system.  Remake it before each run of an A/B comparison.  Needs root (mount).
set -eu
image=${BENCH_FS_IMAGE:-/dev/shm/compass-bench.img}
mountpoint=${BENCH_FS_MOUNT:-/mnt/bench}
umount "$mountpoint" 2>/dev/null || true
rm -f "$image"
truncate -s "${BENCH_FS_SIZE:-6G}" "$image"
mkfs.ext4 -q -F "$image"
mkdir -p "$mountpoint"
mount -o loop "$image" "$mountpoint"
chmod 1777 "$mountpoint"
echo "$mountpoint: fresh ext4 ($image); run with TMPDIR=$mountpoint"
