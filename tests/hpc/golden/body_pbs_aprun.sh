cd /scratch/compass/sub-1 || exit 1
export PYTHONUNBUFFERED=1
export COMPASS_PILOT_JOB_NAME=compass-P09
exec aprun -n 10 -N 1 -d 32 /opt/python3/bin/python3 -m hpc.node_agent --jobset /scratch/compass/sub-1/jobset.json
