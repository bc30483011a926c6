"""Look at the features: the formats people read them in, from what `sae eval` wrote.

    sae eval SAE_DIR --suite records --out reports/rec                  # records + latents.parquet
    sae export SAE_DIR --format dashboard --out site/                   # static HTML, file://
    sae export SAE_DIR --format neuronpedia --out np/                   # batch-*.json
    sae export SAE_DIR --format saelens --out hub/                      # SAELens v6 + README.md

`view.py` reads the records suite's output (sae/eval/records.py) and latents.parquet
(sae/eval/table.py) back per latent; `neuronpedia.py`, `dashboard.py`, `saelens.py` the formats;
`cli.py` the `sae export` command.
"""
