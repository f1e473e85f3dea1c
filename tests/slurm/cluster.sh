#!/usr/bin/env bash
# A one-machine SLURM cluster on localhost for the tests (tests/test_slurm.py): Debian's slurm-wlm + munge, one
# controller and one node with this machine's CPUs. Needs root (it installs packages and starts daemons).
#
#   bash tests/slurm/cluster.sh start DIR   # install if missing, write DIR/slurm.conf, start munged/slurmctld/slurmd
#   bash tests/slurm/cluster.sh stop DIR    # stop the daemons started for DIR
#
# Clients then use SLURM_CONF=DIR/slurm.conf (sbatch, squeue, scontrol, scancel). The ports default to two free
# ones (LIGHTFT_SLURMCTLD_PORT / LIGHTFT_SLURMD_PORT override), so this never talks to another cluster on the machine.
set -euo pipefail
action=${1:?start|stop}
dir=$(mkdir -p "${2:?state directory}" && cd "$2" && pwd)

stop() {  # the daemons started with this directory's slurm.conf (the job steps they ran go with them)
  pkill -f -- "-f $dir/slurm.conf" 2>/dev/null || true
  for _ in $(seq 50); do pgrep -f -- "-f $dir/slurm.conf" >/dev/null || return 0; sleep 0.2; done
  pkill -9 -f -- "-f $dir/slurm.conf" 2>/dev/null || true
}

if [ "$action" = stop ]; then stop; exit 0; fi
[ "$action" = start ] || { echo "cluster.sh: error: unknown action '$action' (start|stop)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "cluster.sh: error: needs root to install slurm-wlm and start its daemons" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$dir/apt.log" 2>&1 \
    || { tail -20 "$dir/apt.log" >&2; exit 1; }
fi

# munge: one daemon per machine, shared by every cluster started here.
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
fi

stop
host=$(hostname -s)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
mkdir -p "$dir/state" "$dir/spool"
cat >"$dir/slurm.conf" <<CONF
ClusterName=lightft-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${LIGHTFT_SLURMCTLD_PORT:-$(free_port)}
SlurmdPort=${LIGHTFT_SLURMD_PORT:-$(free_port)}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"

for _ in $(seq 60); do  # the node registers within a few seconds
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then echo "cluster.sh: node $host idle ($dir/slurm.conf)"; exit 0; fi
  sleep 0.5
done
echo "cluster.sh: error: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
exit 1
