"""ActivationStore: shuffling, bounded mixing, exact resume, the first chunk the scale is measured
on, file sources, the source protocol."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae.activations.sources import MATRIX_HOOK, LiveSource, MatrixSource, open_source
from sae.activations.store import ActivationStore
from sae.config import ConfigError
from sae.config.schema import DataConfig, ModelConfig, StoreConfig
from sae.training.scale import ActivationScale

H = MATRIX_HOOK


def _matrix(tmp_path, n=50_000, d=8, name="x.npy"):
    """Row i carries its own index in column 0, so the stream can be audited row by row."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, x.numpy())
    else:
        save_file({"activations": x}, str(path))
    return path, x


def _ids(batches):
    return torch.cat([b[H][:, 0] for b in batches]).long()


def test_every_row_exactly_once_shuffled_and_mixing_is_bounded(tmp_path):
    """Pins lost/duplicated rows at refills, no shuffling, and unbounded buffer growth."""
    path, _ = _matrix(tmp_path)
    cfg = StoreConfig(buffer_tokens=8192, batch_size=1000)
    batches = list(ActivationStore(MatrixSource(path), cfg))
    ids = _ids(batches)
    assert torch.equal(ids.sort().values, torch.arange(50_000))
    assert not torch.equal(ids, torch.arange(50_000))
    assert all(len(b[H]) == 1000 for b in batches) and len(batches) == 50
    # A group mixes two consecutive chunks (buffer_tokens / 2 rows each); a batch that straddles
    # two groups touches at most three consecutive chunks.
    chunk = cfg.buffer_tokens // 2
    for b in batches:
        c = (b[H][:, 0].long() // chunk).unique()
        assert c.max() - c.min() <= 2
    # A batch draws from across its group, not one contiguous run of the source.
    assert (batches[3][H][:, 0].max() - batches[3][H][:, 0].min()) > cfg.batch_size * 2


@pytest.mark.parametrize("stop", [0, 1, 3, 4, 9, 12, 49, 50])
def test_resume_yields_the_identical_stream(tmp_path, stop):
    """A store rebuilt from state_dict() continues exactly where the first left off."""
    path, _ = _matrix(tmp_path)
    cfg = StoreConfig(buffer_tokens=8192, batch_size=1000, normalize=True)
    full = list(ActivationStore(MatrixSource(path), cfg))
    first = ActivationStore(MatrixSource(path), cfg)
    it = iter(first)
    head = [next(it) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    tail = list(ActivationStore(MatrixSource(path), cfg, state=state))
    got = head + tail
    assert len(got) == len(full)
    for a, b in zip(got, full, strict=True):
        assert torch.equal(a[H], b[H])


def test_resume_refuses_a_different_config(tmp_path):
    path, _ = _matrix(tmp_path, n=20_000)
    cfg = StoreConfig(buffer_tokens=8192, batch_size=1000)
    store = ActivationStore(MatrixSource(path), cfg)
    next(iter(store))
    state = store.state_dict()
    with pytest.raises(ConfigError, match="store.seed=1 but the saved run used 0"):
        ActivationStore(
            MatrixSource(path), StoreConfig(buffer_tokens=8192, batch_size=1000, seed=1), state
        )
    other, _ = _matrix(tmp_path, n=30_000, name="y.npy")
    with pytest.raises(ConfigError, match="activation source differs"):
        ActivationStore(MatrixSource(other), cfg, state)


def test_the_store_never_rescales_and_the_scale_gives_unit_mean_squared_norm(tmp_path):
    """Pins issue 31 item 2: under store.normalize the store multiplied its batches by a factor
    of its own (one of six places that held the scale). It yields the rows as the source gave
    them, whatever the flag; `ActivationScale`, fed the first chunk, brings them to unit mean
    squared norm."""
    path, _ = _matrix(tmp_path, n=20_000)
    x = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(2)) * 7 + 3
    np.save(path, x.numpy())
    store = ActivationStore(
        MatrixSource(path), StoreConfig(buffer_tokens=8192, batch_size=1000, normalize=True)
    )
    scale = ActivationScale(estimate=True)
    store.on_first_chunk = scale.estimate
    rows = torch.cat([b[H] for b in store])
    assert torch.equal(rows.sort(0).values, x.sort(0).values)  # the same rows, shuffled
    scaled = scale.apply({H: rows})[H]
    assert abs(scaled.pow(2).sum(-1).mean().item() - 1.0) < 0.05


def test_safetensors_and_npy_matrix_files_agree_and_bad_files_fail(tmp_path):
    p1, _ = _matrix(tmp_path, n=20_000)
    p2, _ = _matrix(tmp_path, n=20_000, name="x.safetensors")
    cfg = StoreConfig(buffer_tokens=4096, batch_size=512)
    for a, b in zip(
        ActivationStore(MatrixSource(p1), cfg), ActivationStore(MatrixSource(p2), cfg), strict=True
    ):
        assert torch.equal(a[H], b[H])
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 5), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"shape \[3, 4, 5\]; expected \[tokens, d_in\]"):
        MatrixSource(tmp_path / "bad.npy")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="must end in .npy or .safetensors"):
        MatrixSource(tmp_path / "x.txt")


def test_file_sources_shard_by_rank(tmp_path):
    path, _ = _matrix(tmp_path, n=70_000)
    cfg = StoreConfig(buffer_tokens=8192, batch_size=1000)
    ranks = [_ids(list(ActivationStore(MatrixSource(path, r, 2), cfg))) for r in range(2)]
    assert len(set(ranks[0].tolist()) & set(ranks[1].tolist())) == 0
    assert torch.equal(torch.cat(ranks).sort().values, torch.arange(70_000))


def test_live_store_masks_special_tokens_and_resumes_exactly(tiny_models, text_file):
    """Live activations: no BOS/EOS rows; resume mid-stream replays the identical batches."""
    model_cfg = ModelConfig(name=tiny_models["gpt2"], hooks=["resid_post.1"], batch_windows=4)
    data_cfg = DataConfig(source=text_file, context_size=16)
    cfg = StoreConfig(buffer_tokens=512, batch_size=100)
    src = LiveSource(model_cfg, data_cfg, cfg)
    store = ActivationStore(src, cfg)
    full = []
    for b in store:
        full.append(b["resid_post.1"])
        meta = store.last_meta
        assert not torch.isin(meta["tokens"], src.special.to(torch.int32)).any()
        assert (meta["position"] > 0).all()
    assert len(full) > 10
    first = ActivationStore(LiveSource(model_cfg, data_cfg, cfg), cfg)
    it = iter(first)
    head = [next(it)["resid_post.1"] for _ in range(7)]
    tail = [
        b["resid_post.1"]
        for b in ActivationStore(LiveSource(model_cfg, data_cfg, cfg), cfg, first.state_dict())
    ]
    for a, b in zip(head + tail, full, strict=True):
        assert torch.equal(a, b)


def test_live_source_second_pass_replays_the_first_without_the_model(
    tiny_models, text_file, monkeypatch
):
    """Pins the multi-pass memo: after one full pass, a second pass (and a restart from any
    piece's cursor) yields bit-identical pieces without running the model, whether the pass was
    kept in memory, spilled to the temporary file once memory ran out, or both; a pass too large
    for both keeps nothing and recomputes; single-pass readers keep nothing."""
    from sae.activations import sources

    model_cfg = ModelConfig(name=tiny_models["gpt2"], hooks=["resid_post.1"], batch_windows=4)
    data_cfg = DataConfig(source=text_file, context_size=16)
    cfg = StoreConfig(buffer_tokens=512, batch_size=100)
    src = open_source(None, model_cfg, data_cfg, cfg, passes=True)
    first = list(src.pieces())
    assert src.memoized and src._pass_file is None  # all of it fits in memory
    model, tokenizer = src.capture.model, src.windows.tokenizer
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))

    def same(a, b):
        return (
            a.cursor == b.cursor
            and a.rows.keys() == b.rows.keys()
            and all(torch.equal(a.rows[h], b.rows[h]) for h in a.rows)
            and a.meta.keys() == b.meta.keys()
            and all(torch.equal(a.meta[k], b.meta[k]) for k in a.meta)
        )

    def live(memo_bytes, share):
        return LiveSource(model_cfg, data_cfg, cfg, 0, 1, model, tokenizer, memo_bytes, share)

    one = sum(
        v.numel() * v.element_size() for v in [*first[0].rows.values(), *first[0].meta.values()]
    )
    for memo in (src, live(0, 0.5), live(3 * one, 0.5)):  # memory / disk / both
        if memo is not src:
            assert all(same(a, b) for a, b in zip(memo.pieces(), first, strict=True))
            assert memo.memoized and memo._pass_file is not None
            assert os.fstat(memo._pass_file.file.fileno()).st_nlink == 0  # no name on disk
        calls.clear()
        again = list(memo.pieces())
        mid = list(memo.pieces(first[3].cursor))
        assert calls == []
        assert all(same(a, b) for a, b in zip(again, first, strict=True))
        assert all(same(a, b) for a, b in zip(mid, first[3:], strict=True))

    open_pass_file = sources.PassFile.__init__

    def small_disk(self, share):
        open_pass_file(self, share)
        self.budget = 2 * one  # a disk with room for two pieces only

    for reader in (live(1000, 0.0), live(0, 0.0), open_source(None, model_cfg, data_cfg, cfg)):
        assert len(list(reader.pieces())) == len(first) and not reader.memoized
    monkeypatch.setattr(sources.PassFile, "__init__", small_disk)
    full = live(0, 0.5)
    assert len(list(full.pieces())) == len(first) and not full.memoized
    assert full._pass_file is None


def test_store_announces_every_chunk_read(tmp_path):
    """Pins issue 11's progress note: the bar sat at a few hundred tokens/s with no word while
    the store refilled. on_fill(True) comes before each read of the source and on_fill(False)
    after it, so the trainer can say "running <model>" for exactly those pauses."""
    path, _ = _matrix(tmp_path, n=20_000)
    store = ActivationStore(MatrixSource(path), StoreConfig(buffer_tokens=8192, batch_size=1000))
    calls = []
    store.on_fill = calls.append
    n_batches = sum(1 for _ in store)
    assert n_batches == 20
    chunks = -(-20_000 // 4096)  # buffer_tokens / 2 rows per chunk
    assert calls == [True, False] * (chunks + 1)  # the last read finds the source exhausted


def test_normalisation_scale_reads_finite_rows_and_refuses_a_zero_first_chunk(
    tmp_path, monkeypatch
):
    """Issue 24: the scale is (E‖x‖²)^(−1/2) over the first chunk's finite rows (a NaN row made
    it NaN; known answer: rows of norm 2 and a NaN row give 1/2); a first chunk of zero rows is
    one ConfigError naming the way out (it raised ZeroDivisionError). The sources' row screen
    (issue 30 item 4) is off, so the NaN row reaches the scale, as a model's overflow would."""
    from sae.activations import sources

    monkeypatch.setattr(sources, "nonfinite_mask", lambda rows: None)
    monkeypatch.setattr(sources, "check_rows_finite", lambda *args: 0)
    x = np.zeros((2000, 4), np.float32)
    x[:, 0] = 2.0
    x[3] = np.nan
    x[1500:, 1] = 1.0  # the file varies, so it passes the matrix screen
    np.save(tmp_path / "a.npy", x)
    cfg = StoreConfig(buffer_tokens=1000, batch_size=100, normalize=True)
    store, scale = ActivationStore(MatrixSource(tmp_path / "a.npy"), cfg), ActivationScale(True)
    store.on_first_chunk = scale.estimate
    next(iter(store))
    assert scale.factors == {H: 0.5}
    x[:600] = 0.0
    np.save(tmp_path / "z.npy", x)
    store = ActivationStore(MatrixSource(tmp_path / "z.npy"), cfg)
    store.on_first_chunk = ActivationScale(True).estimate
    with pytest.raises(ConfigError, match="are all zero or NaN; shuffle the rows or pass"):
        next(iter(store))


def test_every_source_answers_the_source_protocol(tmp_path, tiny_models, text_file):
    """Pins issue 31 item 5: the trainer, the store and the harvester asked sources what they
    were (`isinstance(source, LiveSource)`, `hasattr(source, "seek")`, `getattr(source,
    "skipped_rows", 0)`). Every source answers the protocol instead: a matrix file cannot seek,
    holds nothing out, runs no model and knows its rows; a live source seeks, holds out windows
    through its model, and refuses to size a pass streamed from the Hub."""
    path, _ = _matrix(tmp_path, n=20_000)
    m = MatrixSource(path)
    m.seek(0, [1, 2])  # nothing to seek
    m.check_matches("any-model", [H])  # nothing to check
    assert (m.position(0), m.held_out(StoreConfig()), m.runs_model, m.skipped_rows) == (
        None, None, False, 0,
    )  # fmt: skip
    assert m.rank_rows() == 20_000 and MatrixSource(path, 1, 2).rank_rows() == 20_000 - 16_384
    model_cfg = ModelConfig(name=tiny_models["gpt2"], hooks=["resid_post.1"], batch_windows=4)
    live = LiveSource(model_cfg, DataConfig(source=text_file, context_size=16), StoreConfig())
    assert live.runs_model and live.rank_rows() > 0
    assert live.held_out(StoreConfig()).data_cfg.part == "eval"
    pieces = live.pieces()
    next(pieces)
    assert live.position(0) is not None
    live.data_cfg = DataConfig(source="someone/corpus", context_size=16)
    with pytest.raises(ConfigError, match="is streamed from the Hub; set total_tokens"):
        live.rank_rows()
