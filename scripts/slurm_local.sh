#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, from Debian's packages (slurm-wlm, munge),
# for tests/test_slurm.py and for trying hydra/launcher=slurm by hand. Needs root.
#   scripts/slurm_local.sh up       install if missing, configure, start, wait until idle
#   scripts/slurm_local.sh down     stop the daemons (configuration and state are kept)
#   scripts/slurm_local.sh status   the daemons and sinfo
# Each command may be repeated: `up` starts only what is not running.
set -euo pipefail

NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld SPOOL=/var/spool/slurmd LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid SLURMD_PID=/run/slurmd.pid MUNGE_PID=/run/munge/munged.pid

say() { echo "slurm_local: $*"; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged \
        >/dev/null && return
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    # slurmd drains a node that has less memory than configured: leave it 5 % of slack
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS"
    cat >"$CONF.new" <<EOF
# written by scripts/slurm_local.sh: one node ($NODE), one partition
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
# no cgroups here (containers): track processes through /proc, bind no tasks
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a node that was down (e.g. slurmd restarted) rejoins as soon as it registers again
ReturnToService=2
# take the CPUs and memory below as they are, even where slurmd counts them differently
SlurmdParameters=config_overrides
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        say "wrote $CONF ($NODE: $cpus CPUs, $mem MB)"
        # daemons started with another configuration: start them again with this one
        for pid in "$SLURMD_PID" "$CTLD_PID"; do stop_daemon "$pid"; done
    fi
}

start_munge() {
    running "$MUNGE_PID" && return
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    say "starting munged"
    # --force: a stale socket left by an earlier run would stop it from starting
    runuser -u munge -- munged --force
}

stop_daemon() {  # by the id in its pid file; wait until it has gone
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    say "stopping $(ps -o comm= -p "$pid") (pid $pid)"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    say "pid $pid did not stop within 10 s" && return 1
}

wait_idle() {
    say "waiting for $NODE to be idle"
    for _ in $(seq 60); do
        local state
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case $state in  # (a trailing * means not responding yet)
            idle|mixed|allocated) say "$NODE is $state"; return 0 ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    say "$NODE is not idle after 60 s (state: ${state:-none}); see $LOGS/" && return 1
}

case ${1:-} in
    up)
        install_packages
        start_munge
        write_conf
        running "$CTLD_PID" || { say "starting slurmctld"; slurmctld; }
        running "$SLURMD_PID" || { say "starting slurmd"; slurmd; }
        wait_idle
        ;;
    down)
        for pid in "$SLURMD_PID" "$CTLD_PID" "$MUNGE_PID"; do stop_daemon "$pid"; done
        say "down"
        ;;
    status)
        for d in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
            running "${d#*:}" && say "${d%%:*} running (pid $(cat "${d#*:}"))" \
                || say "${d%%:*} not running"
        done
        if running "$CTLD_PID"; then sinfo; fi
        ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
