"""Look at the features: feature records, the per-latent table, and exports.

    sae eval SAE_DIR --suite records --out reports/rec                  # records + latents.parquet
    sae export SAE_DIR --format dashboard --out site/                   # static HTML, file://
    sae export SAE_DIR --format neuronpedia --out np/                   # batch-*.json
    sae export SAE_DIR --format saelens --out hub/                      # SAELens v6 + README.md

`accumulate.py` streaming per-latent state; `finalize.py` bins, correlations, logit effects;
`records.py` the records pass (an eval suite); `table.py` latents.parquet; `neuronpedia.py`,
`dashboard.py`, `saelens.py` the formats; `cli.py` the `sae export` command.
"""
