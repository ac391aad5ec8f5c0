# Shared by the launchers: print-or-run for --dry-run, with arguments quoted only where needed.
# shellcheck shell=bash

quote() {  # one argument, shell-quoted only when it needs it, so printed commands stay readable
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quoted() {  # every argument quoted, space separated
  local arg sep=
  for arg in "$@"; do
    printf '%s' "$sep"
    quote "$arg"
    sep=' '
  done
}

run() {  # the command, or (dry run, DRY_RUN=1) its printout
  if ((DRY_RUN)); then
    quoted "$@"
    echo
  else
    "$@"
  fi
}

default_python() {  # $PYTHON if set, else the checkout's .venv (what `make demo` / `make test` create), else python3
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -n ${PYTHON:-} ]]; then
    printf '%s\n' "$PYTHON"
  elif [[ -x $repo/.venv/bin/python ]]; then
    printf '%s\n' "$repo/.venv/bin/python"
  else
    printf '%s\n' python3
  fi
}
