#!/usr/bin/env bash
# GPU launcher for mmjax: one process per node drives all of the node's GPUs. Single node:
# just run it. Several nodes: run it once on every node with the same COORDINATOR and
# NUM_PROCESSES and that node's PROCESS_ID; they are exported as MMJAX_COORDINATOR,
# MMJAX_NUM_PROCESSES, MMJAX_PROCESS_ID for jax.distributed.initialize(). See launch/README.md.
set -euo pipefail
SCRIPT=gpu.sh
LAUNCH_DIR=${BASH_SOURCE[0]%/*}
[[ $LAUNCH_DIR != "${BASH_SOURCE[0]}" ]] || LAUNCH_DIR=.
# shellcheck source=launch/common.bash
source "$LAUNCH_DIR/common.bash"

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] COMMAND [-- TRAINER_FLAGS...]

Commands:
  setup   pip install -e .[gpu] -c constraints.txt into PYTHON's environment
  train   run PYTHON -m mmjax.train --config=CONFIG --workdir=WORKDIR on this node's GPUs

Variables (environment, or the flag in brackets):
  CONFIG          config file[:variants]                              [--config]
  WORKDIR         checkpoints, metrics, exports; shared by all nodes  [--workdir]
                  (a gs:// path or a shared file system) on several nodes
  PYTHON          the Python to run (default python)                  [--python]
  Several nodes (all three, or none):
  COORDINATOR     host:port of process 0, reachable from every node   [--coordinator]
  NUM_PROCESSES   number of processes (nodes)                         [--num-processes]
  PROCESS_ID      this node's process id, 0 .. NUM_PROCESSES-1        [--process-id]
  These are exported as MMJAX_COORDINATOR, MMJAX_NUM_PROCESSES and MMJAX_PROCESS_ID.
  CUDA_VISIBLE_DEVICES  limits the GPUs the process sees (passed through)
  DRY_RUN=1       print each command (prefixed with "+ ") and run nothing [--dry-run]

Flags after "--" go to the trainer, e.g.  launch/gpu.sh train -- --config.total_steps=1000
EOF
}

# --- arguments -----------------------------------------------------------------------------
DRY_RUN=$(dry_run_setting)
PYTHON=${PYTHON:-python}
COMMAND=""
TRAINER_ARGS=()
while (($#)); do
  arg=$1
  shift
  case $arg in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --config | --workdir | --python | --coordinator | --num-processes | --process-id)
      (($#)) || die "$arg needs a value"
      set -- "$arg=$1" "${@:2}"
      continue
      ;;
    --config=*) CONFIG=${arg#*=} ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    --python=*) PYTHON=${arg#*=} ;;
    --coordinator=*) COORDINATOR=${arg#*=} ;;
    --num-processes=*) NUM_PROCESSES=${arg#*=} ;;
    --process-id=*) PROCESS_ID=${arg#*=} ;;
    --)
      TRAINER_ARGS=("$@")
      break
      ;;
    -*) usage_error "unknown option $arg" ;;
    *)
      [[ -z $COMMAND ]] || die "one command at a time, got '$COMMAND' and '$arg'"
      COMMAND=$arg
      ;;
  esac
done
case $COMMAND in
  setup | train) ;;
  "") usage_error ;;
  *) usage_error "unknown command '$COMMAND'" ;;
esac
if ((${#TRAINER_ARGS[@]})) && [[ $COMMAND != train ]]; then
  die "flags after -- are for train only"
fi
if [[ $DRY_RUN != 1 ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  die "PYTHON=$PYTHON not found; activate the environment mmjax is installed in or set PYTHON"
fi

# --- commands ------------------------------------------------------------------------------
case $COMMAND in
  setup)
    root=$(repo_root)
    run "$PYTHON" -m pip install -e "${root}[gpu]" -c "$root/constraints.txt"
    ;;

  train)
    missing=()
    for v in CONFIG WORKDIR; do
      [[ -n ${!v:-} ]] || missing+=("$v")
    done
    ((${#missing[@]} == 0)) ||
      die "train needs ${missing[*]}: set the variable(s) or pass the flag(s); see --help"

    # Several nodes: all of COORDINATOR, NUM_PROCESSES, PROCESS_ID, or none of them.
    multi=()
    missing=()
    for v in COORDINATOR NUM_PROCESSES PROCESS_ID; do
      if [[ -n ${!v:-} ]]; then multi+=("$v"); else missing+=("$v"); fi
    done
    if ((${#multi[@]})); then
      ((${#missing[@]} == 0)) ||
        die "a multi-node run needs COORDINATOR, NUM_PROCESSES and PROCESS_ID;" \
          "${multi[*]} set but ${missing[*]} missing"
      [[ $COORDINATOR =~ ^[^[:space:]]+:[0-9]+$ ]] ||
        die "COORDINATOR=$COORDINATOR: expected host:port of process 0, e.g. 10.0.0.2:1234"
      if ! [[ $NUM_PROCESSES =~ ^[0-9]+$ ]] || ((10#$NUM_PROCESSES < 1)); then
        die "NUM_PROCESSES=$NUM_PROCESSES: expected a positive integer"
      fi
      if ! [[ $PROCESS_ID =~ ^[0-9]+$ ]] || ((10#$PROCESS_ID >= 10#$NUM_PROCESSES)); then
        die "PROCESS_ID=$PROCESS_ID: expected an integer in 0 .. $((10#$NUM_PROCESSES - 1))"
      fi
      run export "MMJAX_COORDINATOR=$COORDINATOR"
      run export "MMJAX_NUM_PROCESSES=$((10#$NUM_PROCESSES))"
      run export "MMJAX_PROCESS_ID=$((10#$PROCESS_ID))"
    fi
    run "$PYTHON" -m mmjax.train "--config=$CONFIG" "--workdir=$WORKDIR" "${TRAINER_ARGS[@]}"
    ;;
esac
