#!/bin/bash
# local run: 10 node agent(s), 32 slots each

cd /scratch/compass/sub-1 || exit 1
export PYTHONUNBUFFERED=1
printf '%s\n' n1:1 n2:1 n3:1 n4:1 n5:1 n6:1 n7:1 n8:1 n9:1 n10:1 > /scratch/compass/sub-1/hostfile
exec mpiexec -disable-auto-cleanup -launcher fork -f /scratch/compass/sub-1/hostfile -n 10 /opt/python3/bin/python3 -m hpc.node_agent --jobset /scratch/compass/sub-1/jobset.json
