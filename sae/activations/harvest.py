"""`sae harvest`: run the model over the data once and write an activation cache.

    sae harvest                                   # built-in default: MiniLM resid_post.3
    sae harvest configs/harvest.yaml --max-tokens 200000 --out caches/minilm-l3
    torchrun --nproc_per_node 2 -m sae harvest configs/harvest.yaml   # one cache per rank

Layout: `manifest.json` plus fixed-size shards `shard_00000.safetensors`, each holding
`acts.<hook>` [n, d] in the storage dtype and per-row `tokens`, `window`, `position`. The
manifest records model, hooks, widths, dtype, token count, data hash, and every shard's sha256
and end position. Shards and the manifest are written atomically, and the manifest is updated
after every shard, so an interrupted harvest resumes at the last complete shard: no token is
lost or written twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from sae import dist
from sae.activations.sources import LiveSource
from sae.activations.store import fixed_chunks
from sae.cliconfig import save_yaml, to_dict
from sae.config import ConfigError, HarvestConfig
from sae.fsutil import atomic_save_safetensors, atomic_write_json, sha256_file, sha256_json

FORMAT = "sae-activation-cache"
VERSION = 1


def _identity(cfg: HarvestConfig) -> dict:
    """Everything that decides the cache's content; resuming requires it to match exactly."""
    return {
        "model": to_dict(cfg.model) | {"device": None, "batch_windows": None},
        "data": to_dict(cfg.data),
        "exclude_bos": cfg.store.exclude_bos,
        "exclude_special": cfg.store.exclude_special,
        "shard_tokens": cfg.shard_tokens,
        "dtype": cfg.dtype,
        "max_tokens": cfg.max_tokens,
    }


def _rank_dir(cfg: HarvestConfig) -> Path:
    out = Path(cfg.out)
    return out if dist.world_size() == 1 else out / f"rank{dist.rank():03d}"


def _prepare(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The existing manifest to resume, None to start fresh; refuse a mismatched cache."""
    manifest_path = out / "manifest.json"
    if overwrite:
        return None
    if not manifest_path.is_file():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(
                f"out={str(out)!r} exists and is not an activation cache; choose another --out."
            )
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("identity") != identity:
        old = manifest.get("identity", {})
        diff = sorted(k for k in identity if old.get(k) != identity[k])
        raise ConfigError(
            f"the cache at {str(out)!r} was made with a different config (differs in {diff}); "
            "pass --overwrite or choose another --out."
        )
    return manifest


def harvest(cfg: HarvestConfig, source: LiveSource | None = None) -> Path:
    """Write (or finish) the activation cache described by `cfg`; returns its folder."""
    out = _rank_dir(cfg)
    identity = _identity(cfg)
    manifest = _prepare(out, identity, cfg.overwrite)
    if manifest is not None and manifest["complete"]:
        dist.print0(f"cache at {out} is already complete ({manifest['n_tokens']} tokens)")
        return out
    if source is None:  # built (and so validated) before anything on disk changes
        source = LiveSource(cfg.model, cfg.data, cfg.store, dist.rank(), dist.world_size())
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    dtype = getattr(torch, cfg.dtype)
    if manifest is None:
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": cfg.model.name,
            "hooks": {h: {"d": d, "shape": [None, d]} for h, d in source.d.items()},
            "dtype": cfg.dtype,
            "context_size": cfg.data.context_size,
            "data_hash": sha256_json(
                identity["data"] | {"tokenizer": source.windows.tokenizer.name_or_path}
            ),
            "identity": identity,
            "n_tokens": 0,
            "shards": [],
            "complete": False,
        }
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        atomic_write_json(out / "manifest.json", manifest)
    shards = manifest["shards"]
    cursor, skip = (shards[-1]["end_cursor"], shards[-1]["end_skip"]) if shards else (0, 0)
    limit = cfg.max_tokens
    done = manifest["n_tokens"]
    bar = tqdm(
        total=limit,
        initial=done,
        unit="tok",
        unit_scale=True,
        disable=cfg.quiet or not dist.is_main(),
        desc=f"harvest {','.join(source.hooks)}",
    )
    chunks = fixed_chunks(source, cfg.shard_tokens, len(shards), cursor, skip)
    for chunk in chunks:
        n = len(chunk.meta["tokens"])
        if limit is not None and done + n > limit:
            n = limit - done
        if n <= 0:
            break
        tensors = {f"acts.{h}": x[:n].to(dtype) for h, x in chunk.rows.items()}
        tensors |= {k: v[:n] for k, v in chunk.meta.items()}
        name = f"shard_{chunk.index:05d}.safetensors"
        atomic_save_safetensors(out / name, tensors)
        shards.append({"file": name, "n_tokens": n, "sha256": sha256_file(out / name)})
        shards[-1]["end_cursor"], shards[-1]["end_skip"] = chunk.end
        done += n
        manifest["n_tokens"] = done
        bar.update(n)
        atomic_write_json(out / "manifest.json", manifest)
        if limit is not None and done >= limit:
            break
    bar.close()
    if done == 0:
        raise ConfigError(f"data.source={cfg.data.source!r} produced no activation rows.")
    manifest["complete"] = True
    atomic_write_json(out / "manifest.json", manifest)
    return out
