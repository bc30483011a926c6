"""`sae eval`: score trained SAEs and write a report people can read and a JSON they can diff.

    sae eval checkpoints/default/final/resid_post.3-topk-3072-k32 --out reports/default
    sae eval checkpoints/sweep/final/* --suite core --eval-tokens 50000 --out reports/sweep
    sae eval SAE_DIR --activations caches/l3 --out reports/cached         # no model run
    sae eval SAE_DIR --data.source docs.jsonl --data.eval-every 4 --out reports/other-text
    sae eval SAE_DIR --model-name ./my-model --data.source notes.txt --out rep  # local: named
    sae eval checkpoints/synthetic/final/* --suite synthetic,core --out reports/synthetic
    sae eval SAE_DIR --device cuda --batch-windows 64 --out reports/gpu  # GPU
    python -c "import sae.eval; print(sae.eval.cli_main(['SAE_DIR', '--out', 'r']))"

Suites (`--suite`, comma-separated; the registry is `base.SUITES`; what each reports is defined
in docs/methods.md):

    core         sae/eval/core.py         reconstruction, sparsity, latent usage, downstream
                                          fidelity (docs/methods.md#reconstruction-core-suite,
                                          docs/methods.md#downstream-fidelity-core-suite)
    synthetic    sae/eval/synthetic.py    recovery of a synthetic run's true dictionary
                                          (docs/methods.md#synthetic-suite)
    redundancy   sae/eval/redundancy.py   eigenspectra and α of the layer, reconstruction, error
                                          and latents (docs/methods.md#redundancy-suite)
    capacity     sae/eval/capacity.py     capacity per feature of the decoder and the MLP neurons
                                          (docs/methods.md#capacity-suite)
    descramble   sae/eval/descramble.py   the closed-form descrambler against the decoder
                                          (docs/methods.md#descramble-suite)
    interaction  sae/eval/interaction.py  interaction sparsity of neurons, PCA, LIB and latents on
                                          one layer pair (docs/methods.md#interaction-suite)
    records      sae/eval/records.py      feature records for `sae export`
                                          (docs/methods.md#records-suite)
    interpret    sae/eval/interpret.py    offline explanations scored by detection
                                          (docs/methods.md#interpret-suite)
    absorption   sae/eval/absorption.py   feature absorption on the first-letter task
                                          (docs/methods.md#absorption-suite)

Layout: `config.py` (EvalConfig), `runner.py` (check inputs, build streams, run suites),
`base.py` (EvalTarget, EvalContext, SuiteResult, the SUITES registry), one module per suite
(above), `stream.py` (activation sources), `splice.py` (model runs with the SAE spliced in),
`stats.py` (per-window sums, bootstrap), `plots.py`, `report.py`, `table.py` (latents.parquet:
one row per latent, every suite's columns), `accumulate.py` + `finalize.py` (the records pass's
streaming state and its end). A new suite is a module with
`check(target)` and `run(target, ctx) -> SuiteResult` plus one line in `base.SUITES`.

Activations. Without --activations the SAE's own model (cfg.json metadata `model_name`, or
--model-name; `hook_name`, `target_hook_name`, `context_size`, `exclude_bos`, `exclude_special`;
loaded with the recorded `model_revision`, `model_dtype` and `model_gguf_file`; --revision and
--model-dtype may fill in the first two but not contradict them; the model repository's own code runs only with
--trust-remote-code True on the command line, and a recorded `model_trust_remote_code: true`
without it is refused) is run over the held-out windows (`data.part='eval'`) of its training
data (metadata `data`, else the run's config.yaml two folders up, else the DataConfig defaults);
`--data.*` flags override single fields. A local model folder recorded as model_name, or a local
file or folder recorded as data.source, is read only when --model-name or --data.source names it
(metadata can come from anyone: sae.config.trust); 'builtin' and Hub names are used as recorded.
An SAE whose metadata has `synthetic` is scored on held-out batches of its generator.

report.json (schema_version 1; written and read as `sae.io.records.Report`):

    schema_version: 1
    sae_version: package version that wrote it
    created_utc: ISO time
    config: EvalConfig as a dict (sae_dirs, suite, activations, data, data_fields, eval_tokens,
            n_boot, seed, device, model_name, model_dtype, revision, trust_remote_code,
            batch_windows, out)
    suites: [suite names run]
    timings_s: {phase: seconds} summed over SAEs (prepare, clean forward, spliced forward, ...)
    saes: [ per SAE:
      name: report subfolder (folder name, '-2' ... on collision)
      folder: absolute SAE folder
      sae: {architecture, d_in, d_sae, d_out, k?}
      model, hook, target_hook, tokens_trained: from cfg.json metadata (the model run is
        activations.model: --model-name when given)
      activations: where the scored rows came from:
        live: {kind, model, model_load: {revision, dtype, trust_remote_code, gguf_file}, hook,
               target_hook, splice_hook, data: DataConfig dict, data_origin,
               train_data: the SAE's recorded training DataConfig dict or null,
               held_out: true | false | "unknown", decided from the windows actually read
               (sae/activations/provenance.py), held_out_basis: why, windows_read,
               windows_in_training, exclude_bos, exclude_special}
        cache / matrix: the source's describe() (path, n_tokens, d, ...) + hook, target_hook
        synthetic: {kind, generator: SyntheticConfig dict, first_batch_index, held_out}
      results: {suite: suite results}; figures: {suite: {name: PNG path relative to report}}
    ]
    frontier: null, or (>= 2 SAEs with core) {fidelity_metric, fidelity_label, figure,
              points: [{name, l0, fvu, fvu_ci, fidelity, fidelity_ci}]}

A headline number is `{value, ci95: [lo, hi] | null, n, over, unit}`: `n` counts what it is
averaged over (`over`: tokens, predictions, positions, windows); null means not finite.

core results: tokens, windows, bootstrap {resamples, unit, level, method, seed},
  reconstruction {mse, fvu, explained_variance, cosine, l2_ratio, optimal_scale,
                  relative_reconstruction_bias, l0} (headline numbers),
  latents {d_sae, dead, dead_frac, dense_1pct, dense_10pct, tokens,
           l0_histogram {values, counts}, log10_density_histogram {bin_edges, counts}},
  downstream {kind: causal_lm | encoder | null, skipped: reason | null, baseline?, metrics:
              causal_lm: ce_clean, ce_spliced, ce_zero_ablation, ce_mean_ablation, ce_increase,
                         kl, ce_recovered (zero-ablation baseline), ce_recovered_mean_ablation
              encoder: hidden_cosine, pooled_cosine}
  Definitions: docs/methods.md#reconstruction-core-suite and
  docs/methods.md#downstream-fidelity-core-suite.
synthetic results: generator, n_true_features, n_learned_features,
  metrics {mmcs, mmcs_abs, reverse_mmcs, reverse_mmcs_abs, recovery_90, recovery_99,
           hungarian_mcc: each {value, null}}, null {mmcs_repeats, mmcs_std, mmcs_exact,
  mmcs_abs_exact, hungarian_exact}, max_cos_by_frequency [per true feature, most frequent first],
  definitions.
Every other suite's results: the docstring of its module (above).
"""

from sae.eval.base import SUITES, EvalContext, EvalTarget, SuiteResult
from sae.eval.config import EvalConfig, parse_args
from sae.eval.runner import cli_main, prepare, run_eval

__all__ = [
    "SUITES",
    "EvalConfig",
    "EvalContext",
    "EvalTarget",
    "SuiteResult",
    "cli_main",
    "parse_args",
    "prepare",
    "run_eval",
]
