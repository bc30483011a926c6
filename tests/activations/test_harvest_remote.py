"""Activation caches beyond one disk: `sae harvest --out URL` on any fsspec filesystem (tested on
memory:// and file://) writes the same bytes as a local harvest and reads back bit-identically;
under torchrun the ranks write one cache that `sae train --activations` reads as a whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import fsspec
import pytest
import torch

from sae.activations.harvest import harvest
from sae.activations.sources import CacheSource
from sae.cli import main
from sae.config import ConfigError
from sae.config.schema import DataConfig, HarvestConfig, ModelConfig

HOOKS = ["resid_pre.1", "resid_post.2"]


def _cfg(tiny_models, text_file, out, **kw) -> HarvestConfig:
    return HarvestConfig(
        model=ModelConfig(name=tiny_models["llama"], hooks=HOOKS, batch_windows=3),
        data=DataConfig(source=text_file, context_size=16),
        out=str(out),
        shard_tokens=300,
        quiet=True,
        **kw,
    )


@pytest.fixture
def memory_url():
    url = f"memory://caches/{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_memory_harvest_is_byte_identical_to_local_and_reads_back(
    tiny_models, text_file, tmp_path, memory_url
):
    """Pins: a harvest to memory:// writes the very shard bytes and checksums of a local
    harvest, CacheSource reads every row back bit-identically, and a corrupted remote shard is
    caught by its checksum."""
    local = harvest(_cfg(tiny_models, text_file, tmp_path / "local", max_tokens=1000))
    assert harvest(_cfg(tiny_models, text_file, memory_url, max_tokens=1000)) == memory_url
    fs = fsspec.filesystem("memory")
    want = json.loads((local / "manifest.json").read_text())
    got = json.loads(fs.cat_file(f"{memory_url}/manifest.json"))
    assert len(got["shards"]) == len(want["shards"]) > 2
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in want["shards"]]
    for s in want["shards"]:
        assert fs.cat_file(f"{memory_url}/{s['file']}") == (local / s["file"]).read_bytes()

    a, b = CacheSource(local), CacheSource(memory_url)
    rows_a, meta_a = a.read(0, a.n_rows)
    rows_b, meta_b = b.read(0, b.n_rows)
    for k in rows_a:
        assert torch.equal(rows_a[k], rows_b[k])
    for k in meta_a:
        assert torch.equal(meta_a[k], meta_b[k])
    # Resuming a complete remote cache is a no-op; a corrupted shard is refused on read.
    assert harvest(_cfg(tiny_models, text_file, memory_url, max_tokens=1000)) == memory_url
    name = got["shards"][1]["file"]
    data = fs.cat_file(f"{memory_url}/{name}")
    fs.pipe_file(f"{memory_url}/{name}", data[:-8] + b"corrupt!")
    with pytest.raises(ConfigError, match=f"{name}' is corrupt"):
        CacheSource(memory_url).read(0, b.n_rows)


def test_file_url_and_training_from_a_memory_cache(
    tiny_models, text_file, tmp_path, memory_url, capsys
):
    """Pins: file:// URLs are the local folder (same files, same reads); `sae harvest --out
    memory://...` prints the URL as its last line and `sae train --activations memory://...`
    trains from it."""
    out = harvest(_cfg(tiny_models, text_file, f"file://{tmp_path / 'f'}", max_tokens=500))
    assert out == tmp_path / "f" and (out / "manifest.json").is_file()
    assert CacheSource(f"file://{out}").n_rows == CacheSource(out).n_rows == 500

    common = ["--model.name", tiny_models["llama"], "--model.hooks", "resid_post.2", "--quiet"]
    main(["harvest", "--data.source", text_file, "--data.context-size", "16", "--out",
          memory_url, "--max-tokens", "600", *common])  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1] == memory_url
    main(["train", "--activations", memory_url, "--sae.d-sae", "64", "--sae.k", "4",
          "--store.buffer-tokens", "256", "--store.batch-size", "64", "--eval-tokens", "0",
          "--out", str(tmp_path / "run"), *common])  # fmt: skip
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert final.endswith("resid_post.2-topk-64-k4") and os.path.isdir(final)


@pytest.mark.slow
def test_torchrun_harvest_writes_one_cache_read_as_a_whole(tiny_models, text_file, tmp_path):
    """Pins: `torchrun --nproc_per_node 2 -m sae harvest` (gloo, CPU) writes one cache whose
    manifest lists both ranks' shards; its rows are exactly the single-process harvest's rows
    (window by window), and `sae train --activations` reads it as one cache."""
    args = ["--model.name", tiny_models["llama"], "--model.hooks", "resid_post.2",
            "--data.source", text_file, "--data.context-size", "16", "--shard-tokens", "100",
            "--quiet"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sae"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([*cmd, "harvest", *args, "--out", str(tmp_path / "two")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(tmp_path / "two")
    main(["harvest", *args, "--out", str(tmp_path / "one")])

    two, one = CacheSource(tmp_path / "two"), CacheSource(tmp_path / "one")
    files = [s["file"] for s in two.shards]
    assert any(f.startswith("shard_r000_") for f in files)
    assert any(f.startswith("shard_r001_") for f in files)
    assert two.n_rows == one.n_rows
    (ra, ma), (rb, mb) = two.read(0, two.n_rows), one.read(0, one.n_rows)

    def by_window(rows, meta):
        order = torch.argsort(meta["window"] * 10_000 + meta["position"])
        return rows["resid_post.2"][order], meta["tokens"][order]

    xa, ta = by_window(ra, ma)
    xb, tb = by_window(rb, mb)
    assert torch.equal(ta, tb)
    torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)  # different batch shapes per rank

    main(["train", "--activations", str(tmp_path / "two"), "--model.name", tiny_models["llama"],
          "--model.hooks", "resid_post.2", "--sae.d-sae", "64", "--sae.k", "4",
          "--store.buffer-tokens", "256", "--store.batch-size", "64", "--eval-tokens", "0",
          "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    summary = json.loads(
        (tmp_path / "run" / "final" / "resid_post.2-topk-64-k4" / "cfg.json").read_text()
    )
    assert summary["metadata"]["tokens_trained"] == two.n_rows // 64 * 64  # whole batches
