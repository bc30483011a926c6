#!/usr/bin/env bash
# The README's first command in a fresh virtual environment, without extras: install exactly as
# it does, then every command's --help and a small train -> eval -> export chain must run on what
# that install brings (issue 30.5: after `pip install -e .` alone, `sae eval --help` died with
# ModuleNotFoundError: No module named 'httpx', which only the dev extra had brought).
# Run from anywhere: bash scripts/fresh_venv_check.sh (a few minutes; nothing is left behind but
# the editable install's sae.egg-info in the clone).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/sae-fresh-venv.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "--- fresh venv [$((SECONDS - start)) s]: $*"; }

step "python -m venv"
python -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
# --- the install part of the README's first command, verbatim (it then runs `sae train`) ---
pip install torch==2.13.0 && pip install -e .

cd "$work"  # nothing below reads the clone: only the installed package and its dependencies
export SAE_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
for cmd in "" train harvest eval export; do
  step "sae $cmd --help"
  sae $cmd --help >/dev/null
done

# The README's `sae train` on the built-in model and text, on a small budget.
step "sae train (built-in model, 20k tokens)"
sae train --total-tokens 20000 --eval-tokens 2048 --sae.d-sae 256 --sae.k 8 \
  --store.buffer-tokens 4096 --store.batch-size 512 --quiet --out "$work/run"
final=$(ls -d "$work"/run/final/*/)
step "sae eval --suite core $final"
sae eval "$final" --suite core --eval-tokens 2048 --n-boot 20 --out "$work/report"
for fmt in saelens dashboard; do
  step "sae export --format $fmt"
  sae export "$final" --format "$fmt" --report "$work/report" --eval-tokens 2048 \
    --out "$work/export-$fmt"
done
test -f "$work/export-saelens/cfg.json" && test -f "$work/export-dashboard/index.html"
step "passed"
