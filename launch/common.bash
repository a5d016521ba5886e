# Helpers shared by the launch scripts (sourced, not run): errors, quoting, dry runs, the
# repository root. The sourcing script sets SCRIPT (its name, for messages) and DRY_RUN.
# shellcheck shell=bash

die() {
  echo "$SCRIPT: error: $*" >&2
  exit 1
}

# Shell-quote the arguments: plain words as they are, anything else in single quotes.
quote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${out[*]}"
}

# Print the command ("+ cmd"); run it unless this is a dry run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    "$@"
  fi
}

# DRY_RUN from the environment as 1 or 0 (1, true and yes mean a dry run).
dry_run_setting() {
  if [[ ${DRY_RUN:-0} =~ ^(1|true|yes)$ ]]; then echo 1; else echo 0; fi
}

# The root of the checkout the launch scripts live in.
repo_root() {
  local here=${BASH_SOURCE[0]%/*}
  [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
  (cd "$here/.." && pwd)
}

# Exit 2 with the usage on stderr: no command, or an unknown option or command ($1: message).
usage_error() {
  [[ -z ${1:-} ]] || echo "$SCRIPT: error: $1" >&2
  usage >&2
  exit 2
}
