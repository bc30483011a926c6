"""`sae harvest`: run the model over the data once and write an activation cache.

    sae harvest                                   # built-in default: MiniLM resid_post.3
    sae harvest configs/harvest.yaml --max-tokens 200000 --out caches/minilm-l3
    sae harvest --out s3://bucket/caches/l3        # any fsspec URL: s3://, gs://, hf://, memory://
    torchrun --nproc_per_node 2 -m sae harvest configs/harvest.yaml   # one cache, all ranks

Layout: `manifest.json` plus fixed-size shards `shard_00000.safetensors`, each holding
`acts.<hook>` [n, d] in the storage dtype and per-row `tokens`, `window`, `position`. The
manifest records model, hooks, widths, dtype, token count, data hash, and every shard's sha256
and end position. Shards and the manifest are written atomically (one object each on an object
store), and the manifest is updated after every shard, so an interrupted harvest resumes at the
last complete shard: no token is lost or written twice. Each shard entry also records the text
position (document, offset) where the next shard starts, so a resume seeks there instead of
re-reading and re-tokenizing the text before it.

Under torchrun every rank harvests its own windows into the same folder (`shard_r001_00000...`,
with its own `manifest.rank001.json` to resume from); once all are done, rank 0 writes
`manifest.json` listing every rank's shards, and `--activations` reads the folder as one cache.
`max_tokens` counts all ranks together.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from sae import dist
from sae.activations.cachefs import CACHE_FORMAT, CacheLocation
from sae.activations.sources import LiveSource
from sae.activations.store import fixed_chunks
from sae.config import ConfigError
from sae.config.parse import to_dict
from sae.config.schema import HarvestConfig
from sae.fsutil import sha256_json

FORMAT = CACHE_FORMAT
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


def _names(world: int, rank: int) -> tuple[str, str]:
    """(this rank's manifest, its shard prefix): one process keeps the single-cache names."""
    if world == 1:
        return "manifest.json", "shard_"
    return f"manifest.rank{rank:03d}.json", f"shard_r{rank:03d}_"


def _prepare(loc: CacheLocation, name: str, identity: dict, overwrite: bool) -> dict | None:
    """The existing manifest to resume, None to start fresh; refuse a folder that is not an
    activation cache of ours (sae/fsutil.py's marker: with or without --overwrite), and a cache
    made with another config."""
    loc.require_ours()
    if overwrite or not loc.exists(name):
        return None
    manifest = loc.read_json(name)
    if manifest.get("identity") != identity:
        old = manifest.get("identity", {})
        diff = sorted(k for k in identity if old.get(k) != identity[k])
        raise ConfigError(
            f"the cache at {loc.display!r} was made with a different config (differs in {diff}); "
            "pass --overwrite or choose another --out."
        )
    return manifest


def _merge(loc: CacheLocation, world: int) -> dict:
    """Rank 0: one manifest listing every rank's shards (interleaved shard by shard)."""
    parts = [loc.read_json(_names(world, r)[0]) for r in range(world)]
    shards = []
    for i in range(max(len(p["shards"]) for p in parts)):
        shards += [
            {k: p["shards"][i][k] for k in ("file", "n_tokens", "sha256")}
            for p in parts
            if i < len(p["shards"])
        ]
    manifest = parts[0] | {
        "shards": shards,
        "n_tokens": sum(p["n_tokens"] for p in parts),
        "complete": all(p["complete"] for p in parts),
        "ranks": [_names(world, r)[0] for r in range(world)],
    }
    loc.write_json("manifest.json", manifest)
    return manifest


def harvest(cfg: HarvestConfig, source: LiveSource | None = None) -> Path | str:
    """Write (or finish) the activation cache described by `cfg`; returns its folder or URL."""
    loc = CacheLocation(cfg.out)
    world, rank = dist.world_size(), dist.rank()
    name, prefix = _names(world, rank)
    identity = _identity(cfg) | ({"world_size": world} if world > 1 else {})
    manifest = _prepare(loc, name, identity, cfg.overwrite)
    result = loc.local if loc.local is not None else loc.display
    if manifest is not None and manifest["complete"] and world == 1:
        dist.print0(f"cache at {loc} is already complete ({manifest['n_tokens']} tokens)")
        return result
    if source is None:  # built (and so validated) before anything on disk changes
        source = LiveSource(cfg.model, cfg.data, cfg.store, rank, world)
    if dist.is_main():
        if cfg.overwrite:
            loc.remove()
        loc.claim()
        loc.clear_staging()  # what writes a kill cut short left, before any rank writes again
    dist.barrier()
    limit = cfg.max_tokens
    if limit is not None and world > 1:  # max_tokens counts all ranks together
        limit = limit // world + (rank < limit % world)
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
        # The manifest first: a folder holding only it is resumed.
        loc.write_json(name, manifest)
        if dist.is_main():
            loc.write_text("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if not manifest["complete"]:
        _fill(cfg, loc, name, prefix, manifest, source, limit)
    dist.barrier()
    if world > 1 and dist.is_main() and _merge(loc, world)["n_tokens"] == 0:
        raise ConfigError(f"data.source={cfg.data.source!r} produced no activation rows.")
    return result


def _fill(cfg: HarvestConfig, loc, name, prefix, manifest, source, limit) -> None:
    """Append shards until the source or `limit` runs out; the manifest follows every shard."""
    dtype = getattr(torch, cfg.dtype)
    shards = manifest["shards"]
    cursor, skip = (shards[-1]["end_cursor"], shards[-1]["end_skip"]) if shards else (0, 0)
    if shards:  # start packing at the saved text position instead of re-reading the text
        source.seek(cursor, shards[-1].get("end_position"))
    done = manifest["n_tokens"]
    bar = tqdm(
        total=limit,
        initial=done,
        unit="tok",
        unit_scale=True,
        disable=cfg.quiet or not dist.is_main(),
        desc=f"harvest {','.join(source.hooks)}",
    )
    for chunk in fixed_chunks(source, cfg.shard_tokens, len(shards), cursor, skip):
        n = len(chunk.meta["tokens"])
        if limit is not None and done + n > limit:
            n = limit - done
        if n <= 0:
            break
        tensors = {f"acts.{h}": x[:n].to(dtype) for h, x in chunk.rows.items()}
        tensors |= {k: v[:n] for k, v in chunk.meta.items()}
        file = f"{prefix}{chunk.index:05d}.safetensors"
        shards.append({"file": file, "n_tokens": n, "sha256": loc.write_tensors(file, tensors)})
        shards[-1]["end_cursor"], shards[-1]["end_skip"] = chunk.end
        shards[-1]["end_position"] = source.position(chunk.end[0])
        done += n
        manifest["n_tokens"] = done
        bar.update(n)
        loc.write_json(name, manifest)
        if limit is not None and done >= limit:
            break
    bar.close()
    if done == 0 and dist.world_size() == 1:
        raise ConfigError(f"data.source={cfg.data.source!r} produced no activation rows.")
    manifest["complete"] = True  # a rank whose share of the windows is empty is done too
    loc.write_json(name, manifest)
