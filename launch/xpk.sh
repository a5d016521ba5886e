#!/usr/bin/env bash
# GKE launcher for mmjax through xpk (https://github.com/AI-Hypercomputer/xpk): submit
# `python -m mmjax.train` as a workload on one or several TPU slices of an xpk cluster; a
# preempted run is restarted by the JobSet and resumes from the latest checkpoint in WORKDIR.
# Step by step in launch/README.md. `--dry-run` prints the commands and runs nothing.
set -euo pipefail
SCRIPT=xpk.sh
LAUNCH_DIR=${BASH_SOURCE[0]%/*}
[[ $LAUNCH_DIR != "${BASH_SOURCE[0]}" ]] || LAUNCH_DIR=.
# shellcheck source=launch/common.bash
source "$LAUNCH_DIR/common.bash"

usage() {
  cat <<'EOF_USAGE'
Usage: launch/xpk.sh [options] COMMAND [-- TRAINER_FLAGS...]

Commands:
  create   submit the training: xpk workload create ... --command "python -m mmjax.train ..."
           on every host of NUM_SLICES slices of TPU_TYPE
  status   list the workload: xpk workload list --filter-by-job WORKLOAD
  delete   delete the workload: xpk workload delete --workload WORKLOAD

Variables (environment, or the flag in brackets):
  CLUSTER            xpk cluster with TPU node pools (xpk cluster create)    [--cluster]
  WORKLOAD           workload name: lower-case letters, digits and '-'      [--workload]
  TPU_TYPE           slice type, e.g. v5p-128, v5litepod-256                [--tpu-type]
  NUM_SLICES         slices joined over DCN (default 1); the trainer gets   [--num-slices]
                     --config.mesh.dcn_data=NUM_SLICES unless a dcn_* size is given
  PROJECT, ZONE      Google Cloud project and zone (default: gcloud config)  [--project] [--zone]
  CONFIG             config file[:variants], relative to the repo           [--config]
  WORKDIR            checkpoints, metrics, exports: a gs://BUCKET/PATH      [--workdir]
  DOCKER_IMAGE       an image with mmjax installed, run as it is             [--docker-image]
  BASE_DOCKER_IMAGE  without DOCKER_IMAGE: xpk copies the committed checkout   [--base-docker-image]
                     (git archive of MMJAX_REF, default HEAD, unpacked under TMPDIR) onto
                     this image (default python:3.11); the workload pip-installs it at start
  MAX_RESTARTS       JobSet restarts after a preemption or a host failure   [--max-restarts]
                     (default 10); a preempted run exits 42, which xpk restarts
  PRIORITY           very-low, low, medium, high or very-high               [--priority]
  SPOT=1             run on Spot capacity                                   [--spot]
  DRY_RUN=1          print each command (prefixed with "+ ") and run nothing [--dry-run]
  XPK                the xpk binary (default xpk; pip install xpk)

Required: create CLUSTER WORKLOAD TPU_TYPE CONFIG WORKDIR; status and delete CLUSTER WORKLOAD.
Flags after "--" go to the trainer, e.g.  launch/xpk.sh create -- --config.total_steps=1000
EOF_USAGE
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

# --- arguments -----------------------------------------------------------------------------
DRY_RUN=$(dry_run_setting)
SPOT=${SPOT:-0}
XPK=${XPK:-xpk}
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
    --cluster | --workload | --tpu-type | --num-slices | --project | --zone | --config | \
      --workdir | --docker-image | --base-docker-image | --max-restarts | --priority)
      (($#)) || die "$arg needs a value"
      set -- "$arg=$1" "${@:2}"
      continue
      ;;
    --cluster=*) CLUSTER=${arg#*=} ;;
    --workload=*) WORKLOAD=${arg#*=} ;;
    --tpu-type=*) TPU_TYPE=${arg#*=} ;;
    --num-slices=*) NUM_SLICES=${arg#*=} ;;
    --project=*) PROJECT=${arg#*=} ;;
    --zone=*) ZONE=${arg#*=} ;;
    --config=*) CONFIG=${arg#*=} ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    --docker-image=*) DOCKER_IMAGE=${arg#*=} ;;
    --base-docker-image=*) BASE_DOCKER_IMAGE=${arg#*=} ;;
    --max-restarts=*) MAX_RESTARTS=${arg#*=} ;;
    --priority=*) PRIORITY=${arg#*=} ;;
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
  create | status | delete) ;;
  "") usage_error ;;
  *) usage_error "unknown command '$COMMAND'" ;;
esac
if ((${#TRAINER_ARGS[@]})) && [[ $COMMAND != create ]]; then
  die "flags after -- are for create only"
fi

# --- checks --------------------------------------------------------------------------------
case $COMMAND in
  create) require CLUSTER WORKLOAD TPU_TYPE CONFIG WORKDIR ;;
  *) require CLUSTER WORKLOAD ;;
esac
[[ $WORKLOAD =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "WORKLOAD=$WORKLOAD: use lower-case letters, digits and '-', starting with a letter"
NUM_SLICES=${NUM_SLICES:-1}
[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=$NUM_SLICES: expected a slice count >= 1"
MAX_RESTARTS=${MAX_RESTARTS:-10}
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=$MAX_RESTARTS: expected a count >= 0"
if [[ $COMMAND == create ]]; then
  [[ $TPU_TYPE =~ ^[a-z0-9]+-([0-9]+)$ ]] ||
    die "TPU_TYPE=$TPU_TYPE is not a slice type like v5litepod-16 or v5p-128"
  # more than 8 (chips or TensorCores) in the type: several hosts per slice
  multi_host=$((10#${BASH_REMATCH[1]} > 8 || NUM_SLICES > 1))
  [[ $WORKDIR == gs://* ]] ||
    die "WORKDIR=$WORKDIR: a workload's disks go with its pods, so WORKDIR must be a gs://" \
      "path that every host can write (e.g. gs://MY_BUCKET/mmjax/$WORKLOAD)"
fi
if [[ $DRY_RUN != 1 ]] && ! command -v "$XPK" >/dev/null 2>&1; then
  die "'$XPK' not found: pip install xpk (it needs gcloud, kubectl and docker), or set XPK" \
    "to its path"
fi

WHERE=(--cluster "$CLUSTER")
[[ -z ${PROJECT:-} ]] || WHERE+=(--project "$PROJECT")
[[ -z ${ZONE:-} ]] || WHERE+=(--zone "$ZONE")

# The shell command every host runs in the container (in the copied checkout without
# DOCKER_IMAGE): the trainer, its output also in a log; a clean stop on SIGTERM (the trainer
# exits 0 with "preempted: ...") becomes exit 42, which xpk's JobSet restarts.
container_command() {
  local env=(PYTHONUNBUFFERED=1) trainer install=""
  ((multi_host)) && env+=(MMJAX_DISTRIBUTED=1)
  trainer=(python -m mmjax.train "--config=$CONFIG" "--workdir=$WORKDIR")
  if ((NUM_SLICES > 1)) && [[ " ${TRAINER_ARGS[*]} " != *" --config.mesh.dcn_"* ]]; then
    trainer+=("--config.mesh.dcn_data=$NUM_SLICES")
  fi
  trainer+=("${TRAINER_ARGS[@]}")
  [[ -n ${DOCKER_IMAGE:-} ]] || install="pip install -q -e '.[tpu]' -c constraints.txt && "
  printf '%s' "$install$(quote "${env[@]}" "${trainer[@]}") 2>&1 | tee /tmp/mmjax-train.log;"
  printf '%s' " rc=\${PIPESTATUS[0]}; if [ \$rc -eq 0 ] && tail -n 3 /tmp/mmjax-train.log |"
  printf " grep -q 'mmjax.train: preempted:'; then exit 42; fi; exit \$rc"
}

# --- commands ------------------------------------------------------------------------------
case $COMMAND in
  create)
    if [[ -n ${DOCKER_IMAGE:-} ]]; then
      image=(--docker-image "$DOCKER_IMAGE")
    else # the committed code only: no venv, caches or outputs in the image
      src=${TMPDIR:-/tmp}/mmjax-xpk-$WORKLOAD
      run rm -rf "$src"
      run mkdir -p "$src"
      run git -C "$(repo_root)" archive --format=tar -o "$src.tar" "${MMJAX_REF:-HEAD}"
      run tar -xf "$src.tar" -C "$src"
      image=(--base-docker-image "${BASE_DOCKER_IMAGE:-python:3.11}" --script-dir "$src")
    fi
    extra=()
    [[ -z ${PRIORITY:-} ]] || extra+=(--priority "$PRIORITY")
    [[ $SPOT =~ ^(1|true|yes)$ ]] && extra+=(--spot)
    run "$XPK" workload create "${WHERE[@]}" --workload "$WORKLOAD" --tpu-type "$TPU_TYPE" \
      --num-slices "$NUM_SLICES" "${image[@]}" --max-restarts "$MAX_RESTARTS" "${extra[@]}" \
      --command "$(container_command)"
    ;;

  status)
    run "$XPK" workload list "${WHERE[@]}" --filter-by-job "$WORKLOAD"
    ;;

  delete)
    run "$XPK" workload delete "${WHERE[@]}" --workload "$WORKLOAD"
    ;;
esac
