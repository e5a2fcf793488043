#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the real-SLURM tests (make slurm-test).
#
#   scripts/slurm-cluster.sh start    install SLURM if absent (Debian: slurm-wlm, as root), write
#                                     the config, start munged, slurmctld and slurmd, wait until
#                                     `srun hostname` answers; does nothing if already up
#   scripts/slurm-cluster.sh status   the daemons and sinfo; exit 0 only if the cluster answers
#   scripts/slurm-cluster.sh stop     cancel the jobs, stop the daemons by their recorded pids
#
# Everything lives in $SOFTMASO_SLURM_DIR (default /tmp/softmaso-slurm): slurm.conf, the munge key
# and socket, state, spool, logs, and `pids` (name pid, one a line). /etc is not touched, so
# clients need SLURM_CONF=$SOFTMASO_SLURM_DIR/slurm.conf (start prints it). One partition,
# `debug`, of this host with the CPUs nproc counts; memory is not a consumable (CR_Core), so
# jobs that ask none all fit. Ports $SOFTMASO_SLURM_PORT and the next one (default 16817):
# beside, not on, a system SLURM's 6817.
set -euo pipefail

DIR=${SOFTMASO_SLURM_DIR:-/tmp/softmaso-slurm}
PORT=${SOFTMASO_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
PIDS=$DIR/pids
export SLURM_CONF=$CONF

say() { echo "slurm-cluster: $*" >&2; }

alive() { # alive NAME PID: PID runs a program called NAME
    [[ -n ${2:-} && -r /proc/$2/comm && $(cat "/proc/$2/comm") == "$1" ]]
}

recorded() { # recorded NAME: the pid recorded for NAME (empty if none)
    [[ -r $PIDS ]] && awk -v n="$1" '$1 == n { print $2 }' "$PIDS" || true
}

answers() { # the controller answers and the node is up
    [[ -r $CONF ]] || return 1
    sinfo --noheader --format=%T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

install() {
    local tools=(munged mungekey slurmctld slurmd sbatch srun squeue scontrol)
    local t missing=0
    for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing=1; done
    ((missing)) || return 0
    [[ $(id -u) == 0 ]] || { say "SLURM is not installed; run as root to install slurm-wlm"; exit 1; }
    say "installing slurm-wlm (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm >/dev/null; }
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 700 "$DIR/munge"
    cat >"$CONF" <<EOF
# written by scripts/slurm-cluster.sh: one node, one partition, no accounting; a requeued job
# may start again 10 s later (cred_expire; SLURM's default 120 s), pending jobs are looked at
# every 2 s (default 60 s)
ClusterName=softmaso
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() { # start_daemon NAME PIDFILE COMMAND...: run it (it forks), record its pid
    local name=$1 pidfile=$2 pid i
    shift 2
    pid=$(recorded "$name")
    if alive "$name" "$pid"; then return 0; fi
    rm -f "$pidfile"
    "$@"
    for i in $(seq 50); do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if alive "$name" "$pid"; then
            { grep -v "^$name " "$PIDS" 2>/dev/null || true; echo "$name $pid"; } >"$PIDS.tmp"
            mv "$PIDS.tmp" "$PIDS"
            return 0
        fi
        sleep 0.1
    done
    say "$name did not start; its log: $DIR/log/$name.log"
    exit 1
}

start() {
    if answers && alive slurmctld "$(recorded slurmctld)" && alive slurmd "$(recorded slurmd)"; then
        say "already up ($DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install
    write_config
    [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    start_daemon munged "$DIR/munge/munged.pid" munged --force \
        --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    start_daemon slurmctld "$DIR/slurmctld.pid" slurmctld -f "$CONF" -c
    start_daemon slurmd "$DIR/slurmd.pid" slurmd -f "$CONF"
    local i
    for i in $(seq 60); do
        if answers && timeout 10 srun --time=1 hostname >/dev/null 2>&1; then
            say "up in $SECONDS s: $(sinfo --noheader --format='%P %D node(s) %c CPUs %T')"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    say "srun hostname does not answer; logs in $DIR/log"
    exit 1
}

stop() {
    local name pid i
    if answers; then # end the jobs first: their processes are not the daemons' children
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for i in $(seq 40); do
            [[ -z $(squeue --noheader --states=RUNNING,COMPLETING 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    for name in slurmd slurmctld munged; do
        pid=$(recorded "$name")
        alive "$name" "$pid" || continue
        kill -TERM "$pid"
        for i in $(seq 50); do alive "$name" "$pid" || break; sleep 0.2; done
        alive "$name" "$pid" && kill -KILL "$pid"
        say "stopped $name ($pid)"
    done
    rm -f "$PIDS"
}

status() {
    local name pid up=0
    for name in munged slurmctld slurmd; do
        pid=$(recorded "$name")
        if alive "$name" "$pid"; then say "$name: running ($pid)"; else say "$name: not running"; up=1; fi
    done
    if answers; then sinfo; else say "the cluster does not answer"; up=1; fi
    return $up
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status  (state in \$SOFTMASO_SLURM_DIR, default $DIR)" >&2; exit 2 ;;
esac
