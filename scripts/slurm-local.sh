#!/usr/bin/env bash
# A throw-away single-node Slurm cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting,
# its own munged) for the project's tests. Debian/Ubuntu, run as root; no systemd, no
# cgroups needed. Everything lives under one folder DIR.
#
#   scripts/slurm-local.sh start  [DIR]   # prints: export SLURM_CONF=DIR/etc/slurm.conf
#   scripts/slurm-local.sh stop   [DIR]
#   scripts/slurm-local.sh status [DIR]   # exit 0 if sinfo answers
#
#   eval "$(scripts/slurm-local.sh start)"
#
# DIR defaults to ${SLURM_LOCAL_DIR:-/tmp/rl-scaling-slurm}. See docs/slurm.md.
set -euo pipefail
umask 022
export PATH=$PATH:/usr/sbin:/sbin

PROG=slurm-local
CLUSTER=${SLURM_LOCAL_CLUSTER:-rlscaling}
PARTITION=debug
MAX_ARRAY_SIZE=${SLURM_LOCAL_MAX_ARRAY_SIZE:-1001}
PORT_BASE=${SLURM_LOCAL_PORT_BASE:-6917}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
DEADLINE_S=${SLURM_LOCAL_TIMEOUT_S:-60}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
MARKER=.rl-scaling-slurm-local
DAEMONS=(slurmstepd slurmd slurmctld slurmscriptd slurmdbd mariadbd munged)

log() { echo "$PROG: $*" >&2; }
vlog() { [[ ${SLURM_LOCAL_VERBOSE:-0} == 0 ]] || log "+$(((${EPOCHREALTIME/./} - T0) / 1000))ms $*"; }
T0=${EPOCHREALTIME/./}
die() { echo "$PROG: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 {start|stop|status} [DIR]   (DIR default: \${SLURM_LOCAL_DIR:-/tmp/rl-scaling-slurm})" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
CMD=$1
DIR=${2:-${SLURM_LOCAL_DIR:-/tmp/rl-scaling-slurm}}
[[ $DIR == /* ]] || DIR="$PWD/$DIR"
DIR=${DIR%/}
[[ -n $DIR && $DIR != / ]] || die "refusing to use '/' as the cluster folder"
for v in MAX_ARRAY_SIZE PORT_BASE DEADLINE_S; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done

CONF=$DIR/etc/slurm.conf
DBD_CONF=$DIR/etc/slurmdbd.conf
MUNGE_SOCK=$DIR/munge/munge.socket.2
DB_SOCK=$DIR/run/mysqld.sock
LOGDIR=$DIR/log
RUNDIR=$DIR/run

# Every client call below goes to this cluster, never to a system one.
export SLURM_CONF=$CONF
unset SLURM_CLUSTERS SLURM_TIME_FORMAT

# -- processes of this cluster --------------------------------------------------------

# true if one of the pids still runs (zombies do not count)
alive() {
    local p st
    for p in "$@"; do
        read -r st 2>/dev/null <"/proc/$p/stat" || continue
        st=${st##*) }
        [[ ${st%% *} != Z ]] && return 0
    done
    return 1
}

# pids of daemons (and slurmstepd) that belong to DIR: named in a pid file under DIR, or
# carrying DIR on their command line (munged, mariadbd) or SLURM_CONF=DIR/etc/slurm.conf
# in their environment (the slurm daemons, slurmstepd)
cluster_pids() {
    local p d f comm
    declare -A seen=()
    for f in "$RUNDIR"/*.pid; do
        [[ -r $f ]] || continue
        p=$(tr -dc 0-9 2>/dev/null <"$f" || true)
        if [[ -z $p ]] || ! alive "$p"; then continue; fi
        comm=
        read -r comm 2>/dev/null <"/proc/$p/comm" || true
        [[ " ${DAEMONS[*]} " == *" $comm "* ]] && seen[$p]=1
    done
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        read -r comm 2>/dev/null <"$d/comm" || continue
        if [[ " ${DAEMONS[*]} " != *" $comm "* ]] || ! alive "$p"; then continue; fi
        if tr '\0' '\n' 2>/dev/null <"$d/cmdline" | grep -qF -- "$DIR/" ||
            tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF -- "SLURM_CONF=$CONF"; then
            seen[$p]=1
        fi
    done
    [[ ${#seen[@]} -eq 0 ]] || printf '%s\n' "${!seen[@]}"
}

# all descendants of the given pids (the job processes under slurmstepd)
descendants() {
    local -a todo=("$@") out=()
    local p c d st
    local -a f
    declare -A kids=()
    for d in /proc/[0-9]*; do
        read -r st 2>/dev/null <"$d/stat" || continue
        read -r -a f <<<"${st##*) }" # state ppid ...
        kids[${f[1]}]+=" ${d#/proc/}"
    done
    while [[ ${#todo[@]} -gt 0 ]]; do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        for c in ${kids[$p]:-}; do
            out+=("$c")
            todo+=("$c")
        done
    done
    [[ ${#out[@]} -eq 0 ]] || printf '%s\n' "${out[@]}"
}


# SIGTERM, wait up to $1 seconds, then SIGKILL
terminate() {
    local wait_s=$1; shift
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local i
    for ((i = 0; i < wait_s * 10; i++)); do
        alive "$@" || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        alive "$@" || return 0
        sleep 0.1
    done
}

pids_named() { # NAME... : cluster pids whose comm is one of NAME
    local p comm
    for p in $(cluster_pids); do
        read -r comm 2>/dev/null <"/proc/$p/comm" || continue
        [[ " $* " == *" $comm "* ]] && echo "$p"
    done
    return 0
}

do_stop() {
    local -a pids jobs
    # jobs first, so that nothing of theirs outlives slurmd
    if [[ -f $CONF ]] && [[ -n $(pids_named slurmctld) ]]; then
        mapfile -t jobs < <(timeout 5 squeue -h -o %A 2>/dev/null || true)
        if [[ ${#jobs[@]} -gt 0 ]]; then
            timeout 5 scancel "${jobs[@]}" 2>/dev/null || true
        fi
    fi
    mapfile -t pids < <(pids_named slurmstepd)
    if [[ ${#pids[@]} -gt 0 ]]; then
        mapfile -t -O "${#pids[@]}" pids < <(descendants "${pids[@]}")
        terminate 3 "${pids[@]}"
    fi
    mapfile -t pids < <(pids_named slurmd)
    terminate 2 "${pids[@]}" # slurmd often ignores SIGTERM here
    mapfile -t pids < <(pids_named slurmctld slurmscriptd)
    terminate 10 "${pids[@]}"
    mapfile -t pids < <(pids_named slurmdbd)
    terminate 10 "${pids[@]}"
    mapfile -t pids < <(pids_named mariadbd)
    terminate 20 "${pids[@]}"
    mapfile -t pids < <(pids_named munged)
    terminate 5 "${pids[@]}"
    mapfile -t pids < <(cluster_pids)
    if [[ ${#pids[@]} -gt 0 ]]; then
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$RUNDIR"/*.pid
    mapfile -t pids < <(cluster_pids)
    ! alive "${pids[@]}"
}

# -- checks ---------------------------------------------------------------------------

sinfo_ok() { [[ -f $CONF ]] && timeout 5 sinfo -h -o %P >/dev/null 2>&1; }
sacct_ok() { [[ -f $CONF ]] && timeout 5 sacct -n -X -S now-1minutes >/dev/null 2>&1; }
node_idle() {
    [[ -f $CONF ]] || return 1
    local out
    out=$(timeout 5 sinfo -h -p "$PARTITION" -o '%a %t' 2>/dev/null) || return 1
    [[ $out == "up idle" ]]
}
is_up() { [[ -n $(pids_named slurmd) && -n $(pids_named slurmdbd) ]] && sinfo_ok && sacct_ok; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_logs() {
    local f
    for f in "$LOGDIR"/*.log; do
        [[ -f $f ]] || continue
        echo "----- $f (last 20 lines) -----" >&2
        tail -n 20 "$f" >&2
    done
}

fail() { # MESSAGE : print logs, leave nothing running, exit 1
    echo "$PROG: error: $*" >&2
    show_logs
    do_stop >/dev/null 2>&1 || true
    echo "$PROG: error: $* (daemon logs above; they stay under $LOGDIR)" >&2
    exit 1
}

wait_for() { # DESCRIPTION COMMAND... : poll until COMMAND succeeds or the deadline passes
    local what=$1; shift
    while ! "$@"; do
        ((SECONDS < END)) || fail "timed out after ${DEADLINE_S}s waiting for $what"
        sleep 0.5
    done
}

# -- packages -------------------------------------------------------------------------

ensure_packages() {
    local -a need=(slurmctld slurmd slurmdbd sinfo sacct sacctmgr munged mariadbd mariadb-install-db mariadb)
    local c missing=()
    for c in "${need[@]}"; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install ${PACKAGES[*]} (needs root; this is uid $(id -u))"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    # keep the packages' init scripts from starting system-wide daemons during install
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}"; } >&2 || rc=$?
    [[ $made_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install ${PACKAGES[*]} failed (exit $rc)"
}

# -- configuration --------------------------------------------------------------------

write_configs() {
    local host hw cpus boards sockets cores threads mem
    host=$(hostname -s)
    hw=$(slurmd -C 2>/dev/null | head -n 1) || true
    field() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$hw"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    cpus=${cpus:-$(nproc)}; boards=${boards:-1}; sockets=${sockets:-1}
    cores=${cores:-$cpus}; threads=${threads:-1}
    mem=${mem:-$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)}
    # a bit below what slurmd finds, or the node drains with "Low RealMemory"
    mem=$((mem - (mem / 20 > 512 ? mem / 20 : 512)))
    ((mem >= 256)) || mem=256

    cat >"$CONF" <<EOF
# written by scripts/slurm-local.sh; regenerated on every fresh start
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MaxArraySize=$MAX_ARRAY_SIZE
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

    DB_PASS=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    (
        umask 077
        cat >"$DBD_CONF" <<EOF
# written by scripts/slurm-local.sh; regenerated on every fresh start
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUNDIR/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$DBD_CONF"
}

# -- start ----------------------------------------------------------------------------

start_munge() {
    (umask 077; head -c 1024 /dev/urandom >"$DIR/etc/munge.key")
    chmod 400 "$DIR/etc/munge.key"
    munged --force --key-file="$DIR/etc/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$RUNDIR/munged.pid" --log-file="$LOGDIR/munged.log" \
        --seed-file="$DIR/state/munged.seed" 2>>"$LOGDIR/munged.log" 9<&- ||
        fail "munged did not start"
    wait_for "the munge socket" test -S "$MUNGE_SOCK"
}

db_ready() { sql "SELECT 1" >/dev/null 2>&1; }

register_cluster() { # sacctmgr add exits non-zero when the cluster exists already
    timeout 5 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 ||
        timeout 5 sacctmgr -n -P show cluster "$CLUSTER" format=cluster 2>/dev/null | grep -qx "$CLUSTER"
}

sql() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCK" -uroot -e "$1"; }

start_mariadb() {
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$DIR/mariadb-install.out" 2>&1 9<&- ||
        { tail -n 20 "$DIR/mariadb-install.out" >&2; fail "mariadb-install-db failed (output in $DIR/mariadb-install.out)"; }
    vlog "mariadb-install-db done"
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --tmpdir="$DIR/tmp" \
        --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$RUNDIR/mariadbd.pid" --log-error="$LOGDIR/mariadb.log" \
        --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --max-allowed-packet=16M \
        </dev/null >>"$LOGDIR/mariadb.log" 2>&1 9<&- &
    wait_for "MariaDB" db_ready
    sql "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
         CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
         FLUSH PRIVILEGES;" 2>>"$LOGDIR/mariadb.log" || fail "could not create the slurm database user"
}

do_start() {
    local want have=
    want="cluster=$CLUSTER max_array_size=$MAX_ARRAY_SIZE port_base=$PORT_BASE"
    [[ -r $DIR/settings ]] && read -r have <"$DIR/settings"
    if is_up; then
        if [[ $have == "$want" ]]; then
            log "cluster in $DIR is already up"
            printf 'export SLURM_CONF=%q\n' "$CONF"
            return 0
        fi
        log "cluster in $DIR is up with other settings ($have); restarting it with $want"
    fi
    ensure_packages
    for s in "$MUNGE_SOCK" "$DB_SOCK"; do
        ((${#s} < 100)) || die "folder too long for a unix socket path: $s"
    done

    # stale state: stop leftovers, wipe state and database together
    if [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
        [[ -e $DIR/$MARKER ]] || die "$DIR is not empty and was not made by this script; pick another DIR"
        log "stopping leftovers and wiping stale state in $DIR"
        do_stop || die "could not stop the old daemons of $DIR: $(cluster_pids | tr '\n' ' ')"
        find "$DIR" -mindepth 1 -maxdepth 1 ! -name "$MARKER" -exec rm -rf {} +
    fi
    local p
    for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
        port_busy "$p" && die "port $p on 127.0.0.1 is in use (another cluster?); set SLURM_LOCAL_PORT_BASE"
    done
    mkdir -p "$DIR" "$DIR/etc" "$DIR/munge" "$DIR/state/slurmctld" "$DIR/state/slurmd" \
        "$LOGDIR" "$RUNDIR" "$DIR/mysql" "$DIR/tmp"
    touch "$DIR/$MARKER"
    echo "$want" >"$DIR/settings"
    chmod 755 "$DIR" "$DIR/etc" "$DIR/munge"

    START=$SECONDS
    END=$((SECONDS + DEADLINE_S))
    write_configs
    vlog "configs written"
    start_munge
    vlog "munged up"
    start_mariadb
    vlog "mariadb up"
    slurmdbd 9<&- || fail "slurmdbd did not start"
    wait_for "slurmdbd" port_busy "$DBD_PORT"
    vlog "slurmdbd up"
    wait_for "sacctmgr to register cluster $CLUSTER" register_cluster
    vlog "cluster registered"
    slurmctld -f "$CONF" 9<&- || fail "slurmctld did not start"
    wait_for "slurmctld" sinfo_ok
    vlog "slurmctld up"
    slurmd -f "$CONF" 9<&- || fail "slurmd did not start"
    wait_for "partition $PARTITION up with an idle node" node_idle
    vlog "node idle"
    wait_for "sacct" sacct_ok
    log "cluster up in $((SECONDS - START))s: $DIR (ports $CTLD_PORT-$DB_PORT)"
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

# -- main -----------------------------------------------------------------------------

# the daemons are started with 9<&- so that they do not inherit (and keep) the lock
lock() {
    mkdir -p "$DIR"
    exec 9<"$DIR"
    flock -w 120 9 || die "another $PROG holds the lock on $DIR"
}

case $CMD in
start)
    [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root from $DIR)"
    lock
    do_start
    ;;
stop)
    [[ -d $DIR ]] || exit 0
    lock
    do_stop || die "processes of $DIR survived SIGKILL: $(cluster_pids | tr '\n' ' ')"
    ;;
status)
    if [[ -n $(pids_named slurmctld) ]] && sinfo_ok; then exit 0; else exit 1; fi
    ;;
*) usage ;;
esac
