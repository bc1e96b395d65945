#!/usr/bin/env bash
# Every check of dinov3nb, in the order CI runs them; stops at the first failure.
#   bash tests/run.sh                    # fast checks
#   DINOV3NB_SLOW=1 bash tests/run.sh    # also `#| slow` notebook cells and pytest's slow tests
# Quarto is not needed: the docs step runs nbdev's notebook processing behind a `quarto` stub.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
slow=${DINOV3NB_SLOW:-0}

step() { printf '\n== %s ==\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
in_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }
# content fingerprint ("sha256  path" lines) of the files under the given paths, caches left out
snapshot() {
  "$PYTHON" - "$@" <<'PY'
import hashlib, sys
from pathlib import Path
for arg in sys.argv[1:]:
    p = Path(arg)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()
                                           and not {"__pycache__", ".ipynb_checkpoints"} & set(f.parts))
    for f in files: print(hashlib.sha256(f.read_bytes()).hexdigest(), f, sep="  ")
PY
}
# fail with `msg` if a tool changed files under `paths` (before/after snapshots), else note uncommitted files
check_unchanged() {
  local before=$1 msg=$2; shift 2
  local after; after=$(snapshot "$@")
  if [ "$before" != "$after" ]; then
    echo "changed files:"
    { diff <(echo "$before") <(echo "$after") || true; } | sed -n 's/^[<>] [0-9a-f]*  /  /p' | sort -u
    fail "$msg"
  fi
  if in_git; then
    local st; st=$(git status --porcelain --untracked-files=all -- "$@")
    if [ -n "$st" ]; then
      echo "note: uncommitted (but in sync) changes; commit them:"; echo "$st" | sed 's/^/  /'
    fi
  else
    echo "note: not a git checkout; compared files before and after instead of against git"
  fi
  echo ok
}

step "a. nbdev-export: package in sync with notebooks"
before=$(snapshot dinov3nb nbs pyproject.toml)
nbdev-export
check_unchanged "$before" "package out of sync with notebooks: run nbdev-export and commit" dinov3nb nbs pyproject.toml

step "b. nbdev-clean: notebooks clean"
before=$(snapshot nbs)
nbdev-clean
check_unchanged "$before" "notebooks not clean: run nbdev-clean" nbs

step "c. README.md in sync with nbs/index.ipynb"
"$PYTHON" tools/readme.py --check || fail "README.md out of date: run python tools/readme.py"

step "d. docs: nbdev-proc-nbs (re-runs exported, import and show_doc cells; output in _proc/)"
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat > "$stub/quarto" <<'STUB'
#!/bin/sh
echo "quarto stub from tests/run.sh: Quarto is not installed; nothing should call it here" >&2
exit 1
STUB
chmod +x "$stub/quarto"
before=$(snapshot nbs)
# a fresh _proc/ instead of `--force`: nbdev also hands `force` to nbdev-sidebar, which would
# then overwrite the hand-written nbs/sidebar.yml (custom_sidebar = true)
rm -rf _proc
PATH="$stub:$PATH" nbdev-proc-nbs --n-workers 2 || fail "docs processing failed: a cell above raised (see the traceback)"
rm -rf "$stub"; trap - EXIT
check_unchanged "$before" "docs step rewrote files in nbs/ (nbdev.yml is generated from pyproject.toml): commit the change" nbs

step "e. nbdev-test: notebook tests"
if [ "$slow" = 1 ]; then nbdev-test --n-workers 2 --flags slow; else nbdev-test --n-workers 2; fi

step "f. pytest"
if [ "$slow" = 1 ]; then "$PYTHON" -m pytest tests -q --runslow; else "$PYTHON" -m pytest tests -q; fi
