#!/usr/bin/env bash
# Cloud TPU VM launcher for mmjax: request a slice (or several, multislice) as a queued
# resource, copy the code to every worker and install it, run `python -m mmjax.train` on all
# workers (once, or `--until-done`: re-creating a preempted queued resource and resuming until
# the run finishes), follow the logs, delete. Step by step in launch/README.md. `--dry-run`
# prints the commands and runs nothing.
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
           --until-done: instead, loop until the run finishes: create the queued resource if
           missing, delete and re-create it when SUSPENDED or FAILED (preempted), wait while
           it is provisioned, run setup on a new one, then run the trainer in the foreground
           (it resumes from the latest checkpoint in WORKDIR); stop when it exits 0 at the end
           of training, and give up after MAX_FAILURES failed runs on an ACTIVE slice
  logs     follow the training log of worker 0 (or --worker=N, --node=N)
  stop     stop the training on all workers
  delete   delete the queued resource and its TPU node(s)

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
  NODE_COUNT       slices joined over DCN (multislice; default 1): [--node-count]
                   create uses --node-count/--node-prefix, the other commands reach every
                   node with `gcloud compute tpus queued-resources ssh/scp --node=all`, and
                   train adds --config.mesh.dcn_data=NODE_COUNT unless a dcn_* size is given
  NODE_PREFIX      multislice node names NODE_PREFIX-0, -1, ... (default NAME) [--node-prefix]
  WORKER           worker whose log `logs` follows (default 0)  [--worker]
  NODE             multislice: node whose log `logs` follows (default 0) [--node]
  UNTIL_DONE=1     train until done (see train)                 [--until-done]
  POLL_SECONDS     --until-done: seconds between state checks (default 60)
  MAX_FAILURES     --until-done: failed runs in a row on an ACTIVE slice before giving up
                   (default 3)
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
# family puts more than one host behind a number above 8. Several slices are several hosts.
is_multi_host() {
  [[ $ACCELERATOR =~ ^[a-z0-9]+-([0-9]+)$ ]] ||
    die "ACCELERATOR=$ACCELERATOR is not an accelerator type like v5litepod-16 or v5p-128"
  ((10#${BASH_REMATCH[1]} > 8 || NODE_COUNT > 1))
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
UNTIL_DONE=${UNTIL_DONE:-0}
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
    --until-done) UNTIL_DONE=1 ;;
    --project | --zone | --accelerator | --name | --runtime-version | --config | --workdir | \
      --worker | --node-count | --node-prefix | --node)
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
    --node-count=*) NODE_COUNT=${arg#*=} ;;
    --node-prefix=*) NODE_PREFIX=${arg#*=} ;;
    --node=*) NODE=${arg#*=} ;;
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
if [[ $UNTIL_DONE =~ ^(1|true|yes)$ ]]; then UNTIL_DONE=1; else UNTIL_DONE=0; fi
((UNTIL_DONE == 0)) || [[ $COMMAND == train ]] || die "--until-done is for train only"

# --- checks --------------------------------------------------------------------------------
case $COMMAND in
  create) require PROJECT ZONE NAME ACCELERATOR ;;
  train) require PROJECT ZONE NAME ACCELERATOR CONFIG WORKDIR ;;
  *) require PROJECT ZONE NAME ;;
esac
NODE_COUNT=${NODE_COUNT:-1}
[[ $NODE_COUNT =~ ^[1-9][0-9]*$ ]] || die "NODE_COUNT=$NODE_COUNT: expected a slice count >= 1"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "NAME=$NAME: use lower-case letters, digits and '-', starting with a letter"
if [[ $COMMAND == train ]] && is_multi_host && [[ $WORKDIR != gs://* ]]; then
  what="$ACCELERATOR is a multi-host slice"
  ((NODE_COUNT == 1)) || what="$NODE_COUNT slices of $ACCELERATOR run on several hosts"
  die "WORKDIR=$WORKDIR: $what, so WORKDIR must be a gs:// path" \
    "that every worker can write (e.g. gs://MY_BUCKET/mmjax/$NAME)"
fi
WORKER=${WORKER:-0}
[[ $WORKER =~ ^[0-9]+$ ]] || die "WORKER=$WORKER: expected a worker number (0, 1, ...)"
NODE=${NODE:-0}
[[ $NODE =~ ^[0-9]+$ ]] || die "NODE=$NODE: expected a node number (0, 1, ...)"
NODE_PREFIX=${NODE_PREFIX:-$NAME}
[[ $NODE_PREFIX =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "NODE_PREFIX=$NODE_PREFIX: use lower-case letters, digits and '-', starting with a letter"
POLL_SECONDS=${POLL_SECONDS:-60}
[[ $POLL_SECONDS =~ ^[0-9]+$ ]] || die "POLL_SECONDS=$POLL_SECONDS: expected whole seconds"
MAX_FAILURES=${MAX_FAILURES:-3}
[[ $MAX_FAILURES =~ ^[1-9][0-9]*$ ]] || die "MAX_FAILURES=$MAX_FAILURES: expected a count >= 1"
if [[ $DRY_RUN != 1 ]] && ! command -v "$GCLOUD" >/dev/null 2>&1; then
  die "'$GCLOUD' not found: install the Google Cloud CLI (https://cloud.google.com/sdk)" \
    "and run 'gcloud auth login', or set GCLOUD to its path"
fi


WHERE=(--project "$PROJECT" --zone "$ZONE")
LOG=mmjax-train.log # in each worker's home directory
PID=mmjax-train.pid
PREEMPTED=75 # exit status of the --until-done remote command after a clean preemption stop
if ((NODE_COUNT > 1)); then # every worker of every slice, through the queued resource
  SSH=("$GCLOUD" compute tpus queued-resources ssh "$NAME" "${WHERE[@]}")
  SCP=("$GCLOUD" compute tpus queued-resources scp)
  ALL=(--node=all --worker=all)
  ONE=(--node="$NODE" --worker="$WORKER")
else
  SSH=("$GCLOUD" compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}")
  SCP=("$GCLOUD" compute tpus tpu-vm scp)
  ALL=(--worker=all)
  ONE=(--worker="$WORKER")
fi

# --- commands ------------------------------------------------------------------------------
cmd_create() {
  local runtime spot=() nodes=(--node-id "$NAME")
  runtime=${RUNTIME_VERSION:-$(default_runtime)}
  [[ $SPOT =~ ^(1|true|yes)$ ]] && spot=(--spot)
  ((NODE_COUNT == 1)) || nodes=(--node-count "$NODE_COUNT" --node-prefix "$NODE_PREFIX")
  run "$GCLOUD" compute tpus queued-resources create "$NAME" "${nodes[@]}" "${WHERE[@]}" \
    --accelerator-type "$ACCELERATOR" --runtime-version "$runtime" "${spot[@]}"
}

cmd_setup() {
  local python ref py install fetch root tarball
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
    run "${SSH[@]}" "${ALL[@]}" --command="$fetch $install"
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
    run "${SCP[@]}" "$tarball" "$NAME:mmjax.tar.gz" "${WHERE[@]}" "${ALL[@]}"
    run "${SSH[@]}" "${ALL[@]}" \
      --command="set -e; rm -rf mmjax; mkdir mmjax; tar -xzf mmjax.tar.gz -C mmjax; $install"
  fi
}

# The trainer command line each worker runs (in ~/mmjax), quoted for its shell.
trainer_command() {
  local env=() trainer
  # Multi-host: the trainer calls jax.distributed.initialize(), which finds the other
  # workers through the TPU metadata (and the other slices through the MEGASCALE_* variables
  # that a multislice queued resource sets).
  is_multi_host && env=(MMJAX_DISTRIBUTED=1)
  trainer=(../mmjax-venv/bin/python -m mmjax.train "--config=$CONFIG" "--workdir=$WORKDIR")
  # data parallel across slices, unless the trainer flags place the slices themselves
  if ((NODE_COUNT > 1)) && [[ " ${TRAINER_ARGS[*]} " != *" --config.mesh.dcn_"* ]]; then
    trainer+=("--config.mesh.dcn_data=$NODE_COUNT")
  fi
  trainer+=("${TRAINER_ARGS[@]}")
  quote "${env[@]}" nohup "${trainer[@]}"
}

RUNNING="if [ -f ../$PID ] && kill -0 \"\$(cat ../$PID)\" 2>/dev/null; then"
RUNNING+=" echo \"mmjax.train is already running on \$(hostname); run stop first\" >&2;"
RUNNING+=" exit 1; fi"

cmd_train() {
  local remote
  remote="cd mmjax && $RUNNING; $(trainer_command) > ../$LOG 2>&1 < /dev/null &"
  run "${SSH[@]}" "${ALL[@]}" --command="$remote echo \$! > ../$PID"
}

# The trainer in the foreground on every worker (appending to its log): exit status 0 at the
# end of training, PREEMPTED after a clean stop on SIGTERM (the trainer then exits 0 with
# "preempted: ..."), the trainer's status otherwise.
foreground_train() {
  local remote
  # this run's part of the log starts after the n bytes already there
  remote="cd mmjax && $RUNNING; n=\$(cat ../$LOG 2>/dev/null | wc -c);"
  remote+=" $(trainer_command) >> ../$LOG 2>&1 < /dev/null &"
  remote+=" echo \$! > ../$PID; wait \$!; rc=\$?; rm -f ../$PID;"
  remote+=" if [ \$rc -eq 0 ] && tail -c +\$((n + 1)) ../$LOG |"
  remote+=" grep -q 'mmjax.train: preempted:'; then rc=$PREEMPTED; fi; exit \$rc"
  run "${SSH[@]}" "${ALL[@]}" --command="$remote"
}

# The queued resource's state (ACTIVE, SUSPENDED, ...), or nothing when there is none.
qr_state() {
  local describe=("$GCLOUD" compute tpus queued-resources describe "$NAME" "${WHERE[@]}"
    "--format=value(state.state)")
  if [[ $DRY_RUN == 1 ]]; then
    run "${describe[@]}"
    return
  fi
  printf '+ %s\n' "$(quote "${describe[@]}")" >&2
  "${describe[@]}" 2>/dev/null || true
}

note() {
  echo "$SCRIPT: $*" >&2
}

until_done() {
  local state rc failures=0 fresh=1
  if [[ $DRY_RUN == 1 ]]; then # one pass from nothing: create, setup, train
    qr_state
    cmd_create
    cmd_setup
    foreground_train
    return
  fi
  while true; do
    state=$(qr_state)
    case $state in
      ACTIVE)
        if ((fresh)); then
          cmd_setup
          fresh=0
        fi
        rc=0
        foreground_train || rc=$?
        if ((rc == 0)); then
          note "training finished; the slice is still billed until: launch/tpu_vm.sh delete"
          return 0
        elif ((rc == PREEMPTED)); then
          note "preempted (checkpoint saved); resuming"
          failures=0
        elif [[ $(qr_state) == ACTIVE ]]; then
          failures=$((failures + 1))
          ((failures < MAX_FAILURES)) ||
            die "train failed $failures time(s) in a row (exit $rc) on an ACTIVE slice;" \
              "see ~/$LOG on the workers (launch/tpu_vm.sh logs)"
          note "train exited with $rc; running it again ($failures of $MAX_FAILURES failures)"
        fi
        ;;
      SUSPENDED | FAILED)
        note "queued resource $NAME is $state (preempted): deleting and re-creating it"
        run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
        cmd_create
        fresh=1
        ;;
      "")
        note "no queued resource $NAME: creating it"
        cmd_create
        fresh=1
        ;;
      *) # ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, CREATING, SUSPENDING, DELETING, ...
        note "queued resource $NAME is $state; checking again in ${POLL_SECONDS}s"
        sleep "$POLL_SECONDS"
        ;;
    esac
  done
}

case $COMMAND in
  create) cmd_create ;;

  status)
    run "$GCLOUD" compute tpus queued-resources describe "$NAME" "${WHERE[@]}"
    ;;

  setup) cmd_setup ;;

  train)
    if ((UNTIL_DONE)); then until_done; else cmd_train; fi
    ;;

  logs)
    run "${SSH[@]}" "${ONE[@]}" --command="tail -n 200 -F $LOG"
    ;;

  stop)
    run "${SSH[@]}" "${ALL[@]}" \
      --command="if [ -f $PID ]; then kill \"\$(cat $PID)\" 2>/dev/null || true; rm -f $PID; fi"
    ;;

  delete)
    # --force deletes the TPU node together with the queued resource; gcloud asks to confirm.
    run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force
    ;;
esac
