#!/bin/bash
#PBS -N P09-2016
#PBS -l nodes=10:ppn=32
#PBS -l walltime=18:00:00
#PBS -q long
#PBS -j oe
#PBS -o /scratch/compass/sub-1/batch.log

cd /scratch/compass/sub-1 || exit 1
export PYTHONUNBUFFERED=1
export COMPASS_PILOT_JOB_NAME=P09-2016
exec mpiexec -disable-auto-cleanup -n 10 -ppn 1 /opt/python3/bin/python3 -m hpc.node_agent --jobset /scratch/compass/sub-1/jobset.json
