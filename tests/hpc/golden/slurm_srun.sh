#!/bin/bash
#SBATCH --job-name=compass-P09
#SBATCH --nodes=10
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=18:00:00
#SBATCH --partition=long
#SBATCH --account=compass
#SBATCH --output=/scratch/compass/sub-1/batch-%j.log

cd /scratch/compass/sub-1 || exit 1
export PYTHONUNBUFFERED=1
export COMPASS_PILOT_JOB_NAME=compass-P09
exec srun --nodes=10 --ntasks=10 --ntasks-per-node=1 --cpus-per-task=32 /opt/python3/bin/python3 -m hpc.node_agent --jobset /scratch/compass/sub-1/jobset.json
