#!/usr/bin/env bash
# A real one-node SLURM (with job accounting) on 127.0.0.1, for the slurm profile test.
#
#   tests/slurm/cluster.sh start STATE_DIR   # install if missing, configure, start every daemon
#   tests/slurm/cluster.sh stop STATE_DIR    # stop the daemons started here, by their PIDs
#
# Everything lives in STATE_DIR (configs, spool, logs, database, munge key). Clients find the cluster
# through SLURM_CONF=STATE_DIR/etc/slurm.conf, and through a symlink /etc/slurm/slurm.conf -> it,
# because the executor's job steps drop every SLURM_* variable (SLURM_CONF too) before calling srun.
# The symlink is made only where no slurm.conf exists, and removed by `stop`.
# Needs root (daemons, apt-get); exits 3 when the packages cannot be installed.
# See tests/slurm/README.md for the recipe step by step.
set -euo pipefail

CLUSTER=histofuse
DB_PORT=3307
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

die() { echo "cluster.sh: $*" >&2; exit 1; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$((limit * 4))"); do
        if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "timed out after ${limit}s waiting for $what (logs in $S/log)"
}

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing+=("$bin")
    done
    if ((${#missing[@]})); then
        echo "cluster.sh: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$S/log/apt.log" 2>&1 \
            || { apt-get update -q >>"$S/log/apt.log" 2>&1 \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$S/log/apt.log" 2>&1; } \
            || { echo "cluster.sh: apt-get could not install ${PACKAGES[*]} (see $S/log/apt.log)" >&2; exit 3; }
    fi
}

write_configs() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat >"$S/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=600
ReturnToService=2
GresTypes=gpu
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$S/etc/gres.conf" <<EOF
AutoDetect=off
Name=gpu Type=fake File=/dev/null
Name=gpu Type=fake File=/dev/zero
EOF
    cat >"$S/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=histofuse
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$S/etc/slurmdbd.conf"
}

start_munge() {
    # Slurm's clients reach munged on its default socket (the accounting connection ignores
    # AuthInfo), so use a munged already answering there, or start one with a fresh key.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "cluster.sh: using the munged already running" >&2
        return
    fi
    install -d -m 700 -o munge -g munge "$S/munge"
    install -d -m 755 -o munge -g munge /run/munge
    head -c 128 /dev/urandom >"$S/munge/munge.key"
    chown munge:munge "$S/munge/munge.key"
    chmod 400 "$S/munge/munge.key"
    runuser -u munge -- /usr/sbin/munged --force --key-file="$S/munge/munge.key" \
        --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" --seed-file="$S/munge/munged.seed"
    wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
    install -d -m 750 -o mysql -g mysql "$S/mysql"
    install -d -m 755 -o mysql -g mysql "$S/mysql-run"  # socket, pid and log: written as mysql
    mariadb-install-db --user=mysql --datadir="$S/mysql" --skip-test-db >"$S/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed (see $S/log/mariadb-install.log)"
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$S/mysql" --socket="$S/mysql-run/mysqld.sock" \
        --port=$DB_PORT --bind-address=127.0.0.1 --pid-file="$S/mysql-run/mariadbd.pid" \
        --log-error="$S/mysql-run/mariadbd.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb --socket="$S/mysql-run/mysqld.sock" -u root -e "SELECT 1"
    mariadb --socket="$S/mysql-run/mysqld.sock" -u root -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'histofuse';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

link_system_config() {
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
        return
    fi
    [[ -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]] \
        && die "/etc/slurm/slurm.conf exists already: this machine has its own SLURM; run the test there instead"
    mkdir -p /etc/slurm
    ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
}

start() {
    [[ $(id -u) == 0 ]] || die "needs root (it starts system daemons)"
    mkdir -p "$S"
    chmod 755 "$S"
    mkdir -p "$S/etc" "$S/log" "$S/run" "$S/state" "$S/spool"
    install_packages
    write_configs
    export SLURM_CONF="$S/etc/slurm.conf"
    link_system_config
    start_munge
    start_mariadb
    /usr/sbin/slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping
    /usr/sbin/slurmd -N localhost
    wait_for 60 "the node to be idle" bash -c '[[ $(sinfo -h -N -o %T) == idle ]]'
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    local pidfile pid
    for pidfile in "$S/run/slurmd.pid" "$S/run/slurmctld.pid" "$S/run/slurmdbd.pid" \
        "$S/mysql-run/mariadbd.pid" "$S/munge/munged.pid"; do
        [[ -s $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$S/etc/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

[[ $# == 2 ]] || die "usage: $0 start|stop STATE_DIR"
S=$(realpath -m "$2")
case $1 in
start) start ;;
stop) stop ;;
*) die "usage: $0 start|stop STATE_DIR" ;;
esac
