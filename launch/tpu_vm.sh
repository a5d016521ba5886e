#!/usr/bin/env bash
# Cloud TPU VM launcher for mmjax: request a slice as a queued resource, copy the code to every
# worker and install it, run `python -m mmjax.train` on all workers, follow the logs, delete.
# Step by step in launch/README.md. `--dry-run` prints the commands and runs nothing.
set -euo pipefail
SCRIPT=tpu_vm.sh
LAUNCH_DIR=${BASH_SOURCE[0]%/*}
[[ $LAUNCH_DIR != "${BASH_SOURCE[0]}" ]] || LAUNCH_DIR=.
# shellcheck source=launch/common.bash
source "$LAUNCH_DIR/common.bash"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] COMMAND [-- TRAINER_FLAGS...]

Commands:
  create   request the slice: gcloud compute tpus queued-resources create
  status   show the queued resource (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, ...)
  setup    copy the code to all workers (git archive of MMJAX_REF, or git clone of MMJAX_REPO)
           and pip install -e .[tpu] into ~/mmjax-venv on every worker
  train    run python -m mmjax.train --config=CONFIG --workdir=WORKDIR on all workers under
           nohup; each worker logs to ~/mmjax-train.log
  logs     follow the training log of worker 0 (or --worker=N)
  stop     stop the training on all workers
  delete   delete the queued resource and its TPU node

Variables (environment, or the flag in brackets):
  PROJECT          Google Cloud project                        [--project]
  ZONE             zone, e.g. us-west4-a                        [--zone]
  ACCELERATOR      accelerator type, e.g. v5litepod-16, v5p-128 [--accelerator]
  NAME             queued resource and TPU node name            [--name]
  RUNTIME_VERSION  TPU software version, default by family:     [--runtime-version]
                   v5litepod/v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                   v6e v2-alpha-tpuv6e, v2/v3/v4 tpu-ubuntu2204-base
  CONFIG           config file[:variants], relative to the repo [--config]
  WORKDIR          checkpoints, metrics, exports; must be gs://BUCKET/PATH
                   on a multi-host slice (more than 8 in ACCELERATOR) [--workdir]
  SPOT=1           create a Spot slice                          [--spot]
  WORKER           worker whose log `logs` follows (default 0)  [--worker]
  MMJAX_REPO       setup: git clone this URL on the workers instead of copying this checkout
  MMJAX_REF        setup: commit, branch or tag to copy or check out (default HEAD)
  REMOTE_PYTHON    setup: Python >= 3.11 on the workers for the venv (default python3.11;
                   installed with apt-get when missing)
  DRY_RUN=1        print each command (prefixed with "+ ") and run nothing [--dry-run]
  GCLOUD           the gcloud binary (default gcloud)

Required: create PROJECT ZONE NAME ACCELERATOR; train PROJECT ZONE NAME ACCELERATOR CONFIG
WORKDIR; the other commands PROJECT ZONE NAME.
Flags after "--" go to the trainer, e.g.  launch/tpu_vm.sh train -- --config.total_steps=1000
EOF
}

require() {
  local v missing=()
  for v in "$@"; do
    [[ -n ${!v:-} ]] || missing+=("$v")
  done
  if ((${#missing[@]})); then
    die "$COMMAND needs ${missing[*]}: set the variable(s) or pass the flag(s); see --help"
  fi
}

# The number in the accelerator type (TensorCores on v2-v4/v5p, chips on v5e/v6e); every
# family puts more than one host behind a number above 8.
is_multi_host() {
  [[ $ACCELERATOR =~ ^[a-z0-9]+-([0-9]+)$ ]] ||
    die "ACCELERATOR=$ACCELERATOR is not an accelerator type like v5litepod-16 or v5p-128"
  ((10#${BASH_REMATCH[1]} > 8))
}

default_runtime() {
  case $ACCELERATOR in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default RUNTIME_VERSION for ACCELERATOR=$ACCELERATOR; set RUNTIME_VERSION" ;;
  esac
}

# --- arguments -----------------------------------------------------------------------------
DRY_RUN=$(dry_run_setting)
SPOT=${SPOT:-0}
GCLOUD=${GCLOUD:-gcloud}
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
    --spot) SPOT=1 ;;
    --project | --zone | --accelerator | --name | --runtime-version | --config | --workdir | --worker)
      (($#)) || die "$arg needs a value"
      set -- "$arg=$1" "${@:2}"
      continue
      ;;
    --project=*) PROJECT=${arg#*=} ;;
    --zone=*) ZONE=${arg#*=} ;;
    --accelerator=*) ACCELERATOR=${arg#*=} ;;
    --name=*) NAME=${arg#*=} ;;
    --runtime-version=*) RUNTIME_VERSION=${arg#*=} ;;
    --config=*) CONFIG=${arg#*=} ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    --worker=*) WORKER=${arg#*=} ;;
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
  create | status | setup | train | logs | stop | delete) ;;
  "") usage_error ;;
  *) usage_error "unknown command '$COMMAND'" ;;
esac
if ((${#TRAINER_ARGS[@]})) && [[ $COMMAND != train ]]; then
  die "flags after -- are for train only"
fi

# --- checks --------------------------------------------------------------------------------
case $COMMAND in
  create) require PROJECT ZONE NAME ACCELERATOR ;;
  train) require PROJECT ZONE NAME ACCELERATOR CONFIG WORKDIR ;;
  *) require PROJECT ZONE NAME ;;
esac
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "NAME=$NAME: use lower-case letters, digits and '-', starting with a letter"
if [[ $COMMAND == train ]] && is_multi_host && [[ $WORKDIR != gs://* ]]; then
  die "WORKDIR=$WORKDIR: $ACCELERATOR is a multi-host slice, so WORKDIR must be a gs:// path" \
    "that every worker can write (e.g. gs://MY_BUCKET/mmjax/$NAME)"
fi
WORKER=${WORKER:-0}
[[ $WORKER =~ ^[0-9]+$ ]] || die "WORKER=$WORKER: expected a worker number (0, 1, ...)"
if [[ $DRY_RUN != 1 ]] && ! command -v "$GCLOUD" >/dev/null 2>&1; then
  die "'$GCLOUD' not found: install the Google Cloud CLI (https://cloud.google.com/sdk)" \
    "and run 'gcloud auth login', or set GCLOUD to its path"
fi

WHERE=(--project "$PROJECT" --zone "$ZONE")
SSH=("$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}")
LOG=mmjax-train.log # in each worker's home directory
PID=mmjax-train.pid

# --- commands ------------------------------------------------------------------------------
case $COMMAND in
  create)
    runtime=${RUNTIME_VERSION:-$(default_runtime)}
    spot=()
    [[ $SPOT =~ ^(1|true|yes)$ ]] && spot=(--spot)
    run "$GCLOUD" compute tpus queued-resources create "$NAME" --node-id "$NAME" "${WHERE[@]}" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$runtime" "${spot[@]}"
    ;;

  status)
    run "$GCLOUD" compute tpus queued-resources describe "$NAME" "${WHERE[@]}"
    ;;

  setup)
    python=${REMOTE_PYTHON:-python3.11}
    ref=${MMJAX_REF:-HEAD}
    py=$(quote "$python")
    install="if ! command -v $py >/dev/null; then sudo apt-get update -qq;"
    install+=" sudo apt-get install -y -qq $(quote "$python" "$python-venv"); fi;"
    install+=" [ -x mmjax-venv/bin/python ] || $py -m venv mmjax-venv;"
    install+=" mmjax-venv/bin/pip install -q -U pip;"
    install+=" mmjax-venv/bin/pip install -q -e './mmjax[tpu]' -c mmjax/constraints.txt"
    if [[ -n ${MMJAX_REPO:-} ]]; then
      fetch="set -e; rm -rf mmjax; git clone -q $(quote "$MMJAX_REPO") mmjax;"
      [[ -z ${MMJAX_REF:-} ]] || fetch+=" git -C mmjax checkout -q $(quote "$MMJAX_REF");"
      run "${SSH[@]}" --worker=all --command="$fetch $install"
    else
      root=$(repo_root)
      tarball=${TMPDIR:-/tmp}/mmjax-$NAME.tar.gz
      if [[ $DRY_RUN != 1 ]]; then
        command -v git >/dev/null 2>&1 || die "git not found (needed to archive the checkout)"
        if [[ -n $(git -C "$root" status --porcelain --untracked-files=no) ]]; then
          echo "tpu_vm.sh: warning: uncommitted changes are not copied (git archive $ref)" >&2
        fi
      fi
      run git -C "$root" archive --format=tar.gz -o "$tarball" "$ref"
      run "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$NAME:mmjax.tar.gz" "${WHERE[@]}" \
        --worker=all
      run "${SSH[@]}" --worker=all \
        --command="set -e; rm -rf mmjax; mkdir mmjax; tar -xzf mmjax.tar.gz -C mmjax; $install"
    fi
    ;;

  train)
    env=()
    # Multi-host: the trainer calls jax.distributed.initialize(), which finds the other
    # workers through the TPU metadata.
    is_multi_host && env=(MMJAX_DISTRIBUTED=1)
    trainer=(../mmjax-venv/bin/python -m mmjax.train "--config=$CONFIG" "--workdir=$WORKDIR")
    trainer+=("${TRAINER_ARGS[@]}")
    remote="cd mmjax && if [ -f ../$PID ] && kill -0 \"\$(cat ../$PID)\" 2>/dev/null; then"
    remote+=" echo \"mmjax.train is already running on \$(hostname); run stop first\" >&2;"
    remote+=" exit 1; fi; $(quote "${env[@]}" nohup "${trainer[@]}") > ../$LOG 2>&1 < /dev/null &"
    remote+=" echo \$! > ../$PID"
    run "${SSH[@]}" --worker=all --command="$remote"
    ;;

  logs)
    run "${SSH[@]}" --worker="$WORKER" --command="tail -n 200 -F $LOG"
    ;;

  stop)
    run "${SSH[@]}" --worker=all \
      --command="if [ -f $PID ]; then kill \"\$(cat $PID)\" 2>/dev/null || true; rm -f $PID; fi"
    ;;

  delete)
    # --force deletes the TPU node together with the queued resource; gcloud asks to confirm.
    run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force
    ;;
esac
