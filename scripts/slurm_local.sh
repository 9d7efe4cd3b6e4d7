#!/usr/bin/env bash
# A one-node SLURM cluster on this machine: try `hydra/launcher=slurm` on a laptop, and the
# cluster of tests/test_slurm.py.
#
#   sudo scripts/slurm_local.sh start     # munged, slurmctld, slurmd; waits until the node is idle
#   eval "$(scripts/slurm_local.sh env)"  # export SLURM_CONF=... (sbatch, squeue, and python train.py -m ...)
#   scripts/slurm_local.sh status         # one line; exit 0 running, 3 stopped
#   sudo scripts/slurm_local.sh stop      # cancels its jobs, stops the daemons it started (files stay)
#
# Needs root (slurmd starts jobs as their users; munged runs as the `munge` user) and Debian's
# `slurm-wlm` and `munge` (apt-get install slurm-wlm munge; written against 22.05). Everything lives
# under $EXPKIT_SLURM_DIR (default /tmp/expkit-slurm): slurm.conf (SLURM_CONF points at it, nothing
# in /etc is read or written), munge key and socket, spool, state, logs. Partition `debug`: one
# node, this host (`hostname -s`), CPUs = nproc, RealMemory = total memory (free -m) less 5%. No accounting
# database: sacct fails, so squeue is the source of job states (expkit/scheduler.py says so once).
#
# It refuses, with one line and exit 2, on a machine with a SLURM of its own: /etc/slurm/slurm.conf
# (or /etc/slurm-llnl/slurm.conf) exists, SLURM_CONF names another file, or a slurmctld/slurmd runs
# that this script did not start. Exit 1: the cluster failed to come up (see the logs it names).
#
# Tunables (environment, read by `start` when it writes slurm.conf):
#   EXPKIT_SLURM_PORT=6817         slurmctld's port (slurmd gets the next one)
#   EXPKIT_SLURM_CRED_EXPIRE=10    a requeued job may start again this many seconds + 1 after it
#                                  ended (AuthInfo cred_expire; SLURM's default is 120: the "2
#                                  minutes" a requeued job waits on a default cluster; minimum 5)
#   EXPKIT_SLURM_KILL_WAIT=30      seconds between SIGTERM and SIGKILL (KillWait; SLURM's default)
# A pending job that has become eligible (a requeued one after cred_expire) starts at the next
# scheduling pass that tests it: sched_interval=1 here (SLURM's default 60 s; backfill, bf_interval,
# skips cycles in which no job or node changed, so it does not pick such a job up).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons, for a root shell without sbin on its PATH

DIR=${EXPKIT_SLURM_DIR:-/tmp/expkit-slurm}
CONF=$DIR/slurm.conf
PORT=${EXPKIT_SLURM_PORT:-6817}
CRED_EXPIRE=${EXPKIT_SLURM_CRED_EXPIRE:-10}
KILL_WAIT=${EXPKIT_SLURM_KILL_WAIT:-30}
NODE=$(hostname -s)

die() { echo "slurm_local: error: $2" >&2; exit "$1"; }
say() { echo "slurm_local: $*"; }

# pid of our daemon $1 (slurmctld, slurmd, munged) if it is alive and really that program
ours() {
    local f pid
    case $1 in munged) f=$DIR/munge/munged.pid ;; *) f=$DIR/run/$1.pid ;; esac
    [[ -r $f ]] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$1" ]] || return 1
    echo "$pid"
}

# pids of the live processes named $1 (pgrep -x without procps; zombies left by a daemon's
# fork, which a container's pid 1 may never reap, are not daemons)
pids_named() {
    local f d
    for f in /proc/[0-9]*/comm; do
        [[ $(cat "$f" 2>/dev/null) == "$1" ]] || continue
        d=${f%/comm}
        grep -q '^State:[[:space:]]*Z' "$d/status" 2>/dev/null || echo "${d#/proc/}"
    done
    return 0
}

# the daemons named $1 that run on this machine but are not ours
foreign() {
    local mine p out=""
    mine=$(ours "$1" || true)
    for p in $(pids_named "$1"); do
        [[ $p == "$mine" ]] || out+="$p "
    done
    echo "$out"
}

check_machine() {
    local f p
    for f in /etc/slurm/slurm.conf /etc/slurm-llnl/slurm.conf; do
        [[ -e $f ]] && die 2 "this machine has its own SLURM configuration ($f): use that cluster; nothing was changed"
    done
    if [[ -n ${SLURM_CONF:-} && $SLURM_CONF != "$CONF" ]]; then
        die 2 "SLURM_CONF=$SLURM_CONF names another cluster's configuration; nothing was changed"
    fi
    for f in slurmctld slurmd; do
        p=$(foreign $f)
        [[ -z $p ]] || die 2 "a $f this script did not start is running (pid ${p% }): this machine has a SLURM of its own; nothing was changed"
    done
}

node_state() { SLURM_CONF=$CONF timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1; }

running() { ours slurmctld >/dev/null && ours slurmd >/dev/null && ours munged >/dev/null; }

write_conf() {
    local cpus mem first
    cpus=$(nproc)
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)  # free -m's total, less 5%
    # job ids start from the clock, so a cluster re-created later never reuses a job id that an
    # old sweep dir's .submitit/<job id>/ folder still holds results for
    first=$(( ($(date +%s) / 10) % 60000000 + 1000 ))
    cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh: a one-node test cluster ($DIR)
ClusterName=expkit-local
SlurmctldHost=$NODE
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=$CRED_EXPIRE
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=$KILL_WAIT
MinJobAge=300
FirstJobId=$first
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$CONF"
}

start() {
    [[ $(id -u) == 0 ]] || die 2 "needs root (slurmd starts jobs as their users): sudo $0 start"
    local c
    for c in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
        command -v $c >/dev/null || die 2 "$c not found: apt-get install slurm-wlm munge"
    done
    [[ $CRED_EXPIRE =~ ^[0-9]+$ && $CRED_EXPIRE -ge 5 ]] \
        || die 2 "EXPKIT_SLURM_CRED_EXPIRE=$CRED_EXPIRE: must be a whole number >= 5 (SLURM ignores smaller values and waits 120 s)"
    [[ $KILL_WAIT =~ ^[0-9]+$ ]] || die 2 "EXPKIT_SLURM_KILL_WAIT=$KILL_WAIT: must be a whole number of seconds"
    check_machine
    if running; then
        say "already running (node $NODE $(node_state)); export SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$DIR"/{run,log,state,spool,munge}
    chmod 755 "$DIR" "$DIR"/{run,log,spool}
    chmod 700 "$DIR/state"
    touch "$DIR/plugstack.conf"
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"  # clients reach the socket in it; munged refuses a group/world-writable dir
    ours slurmctld >/dev/null || write_conf  # the tunables of this start
    if ! ours munged >/dev/null; then
        if [[ ! -s $DIR/munge/munge.key ]]; then
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
            chown munge:munge "$DIR/munge/munge.key"
            chmod 400 "$DIR/munge/munge.key"
        fi
        rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"
        runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
            --seed-file="$DIR/munge/munged.seed" \
            || die 1 "munged did not start: $DIR/munge/munged.log"
    fi
    # slurmctld keeps its state (and the job id counter) across stop/start; -i: a damaged state
    # file is dropped, not fatal
    ours slurmctld >/dev/null || SLURM_CONF=$CONF slurmctld -i || die 1 "slurmctld did not start: $DIR/log/slurmctld.log"
    ours slurmd >/dev/null || SLURM_CONF=$CONF slurmd || die 1 "slurmd did not start: $DIR/log/slurmd.log"
    local s="" i
    for i in $(seq 1 60); do
        s=$(node_state)
        case $s in
            idle|mix|alloc) break ;;
            down*|drain*|drng*) SLURM_CONF=$CONF scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $s in
        idle|mix|alloc) say "started: partition debug, node $NODE $s ($(nproc) CPUs); export SLURM_CONF=$CONF" ;;
        *) die 1 "node $NODE is '${s:-not reported}' after 30 s: $DIR/log/slurmd.log, $DIR/log/slurmctld.log" ;;
    esac
}

stop() {
    local d pid n any=""
    if ours slurmctld >/dev/null; then  # its jobs first, so no job outlives the cluster
        local jobs
        jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            SLURM_CONF=$CONF timeout 10 scancel $jobs 2>/dev/null || true
            for n in $(seq 1 20); do
                [[ -z $(SLURM_CONF=$CONF timeout 10 squeue -h -t running,completing -o %A 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    for d in slurmd slurmctld munged; do
        pid=$(ours $d) || continue
        any+="$d "
        kill -TERM "$pid" 2>/dev/null || true
        for n in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $any ]]; then
        say "stopped ${any% } (files kept in $DIR)"
    else
        say "not running (nothing to stop)"
    fi
}

status() {
    if running; then
        say "running: slurmctld $(ours slurmctld), slurmd $(ours slurmd), munged $(ours munged); node $NODE $(node_state); export SLURM_CONF=$CONF"
    else
        local part=""
        for d in slurmctld slurmd munged; do ours $d >/dev/null && part+="$d "; done
        say "stopped${part:+ (still running: ${part% })}"
        return 3
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
