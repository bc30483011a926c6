"""Text sources and packing."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sae.activations.text import TokenWindows, builtin_documents, documents, pack_windows
from sae.config import ConfigError
from sae.config.schema import DataConfig

docs_strategy = st.lists(st.lists(st.integers(3, 99), max_size=40), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    docs=docs_strategy, ctx=st.integers(2, 17), bos=st.sampled_from(["window", "document", "none"])
)
def test_packing_full_windows_no_token_lost_or_duplicated(docs, ctx, bos):
    """Pins off-by-one bugs in packing: short windows, dropped or repeated tokens at seams."""
    windows = list(pack_windows(docs, ctx, bos_id=1, sep_id=2, bos=bos))
    assert all(len(w) == ctx for w in windows)
    stream = []
    for d in docs:
        stream += ([1] if bos == "document" else []) + d + [2]
    body = [w[1:] for w in windows] if bos == "window" else windows
    if bos == "window":
        assert all(w[0] == 1 for w in windows)
    flat = [t for w in body for t in w]
    n_text = ctx - 1 if bos == "window" else ctx
    # Exactly the stream, in order, up to the ragged tail (shorter than one window).
    assert flat == stream[: len(flat)]
    assert len(stream) - len(flat) < n_text


def test_builtin_corpus_is_python_docs_and_deterministic():
    """The default text must need no download and be the same on every run."""
    a = list(builtin_documents())
    assert len(a) > 5000 and sum(map(len, a)) > 1_500_000
    assert a[:50] == list(itertools.islice(builtin_documents(), 50))


def test_builtin_corpus_is_cached_whole_and_only_whole(tmp_path, monkeypatch):
    """The parsed corpus is written to the cache only after a full pass, read back equal (from
    any start key) without parsing, and a damaged cache file is parsed again and replaced; the
    file's name changes when a source file changes (stale corpora are never read)."""
    from sae.activations import text as T

    stdlib, files = T._builtin_files()
    monkeypatch.setattr(T, "_builtin_files", lambda: (stdlib, files[:6]))  # a small corpus
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(T, "_builtin_memo", None)
    cache = T.builtin_cache_file()

    list(itertools.islice(T.keyed_builtin_documents(), 3))
    assert not cache.exists()  # a partial read writes nothing
    parsed = list(T.keyed_builtin_documents())
    assert cache.exists() and len(parsed) > 100
    # no temporary file left behind; the folder carries our marker (sae/fsutil.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sae-folder.json", cache.name]

    def no_parse(start):
        raise AssertionError("parsed although the cache holds the corpus")

    parse = T._parse_builtin
    monkeypatch.setattr(T, "_parse_builtin", no_parse)
    monkeypatch.setattr(T, "_builtin_memo", None)  # a new process: only the disk has it
    assert list(T.keyed_builtin_documents()) == parsed
    key = parsed[len(parsed) // 2][0]
    assert list(T.keyed_builtin_documents(key)) == [kd for kd in parsed if kd[0] >= key]

    cache.write_text('[[0, "trunc', encoding="utf-8")
    monkeypatch.setattr(T, "_parse_builtin", parse)
    monkeypatch.setattr(T, "_builtin_memo", None)
    assert list(T.keyed_builtin_documents()) == parsed
    assert json.loads(cache.read_text(encoding="utf-8")) == [list(kd) for kd in parsed]

    copy = tmp_path / "src"
    copy.mkdir()
    mine = [copy / f.name for f in files[:2]]
    for src, dst in zip(files[:2], mine, strict=True):
        dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(T, "_builtin_files", lambda: (str(copy), mine))
    before = T.builtin_cache_file()
    mine[1].write_text(mine[1].read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert T.builtin_cache_file() != before


def _tokenizer():
    from transformers import AutoTokenizer

    from sae.activations.capture import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin"))


def test_local_sources_jsonl_parquet_txt_and_dataset_folder(tmp_path, text_file):
    """Every local form reads the same documents; a folder goes through load_dataset(name)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(text_file)]
    want = [r["text"] for r in rows]
    assert list(documents(DataConfig(source=text_file))) == want
    pq.write_table(pa.table({"text": want}), tmp_path / "d.parquet")
    assert list(documents(DataConfig(source=str(tmp_path / "d.parquet")))) == want
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    (repo / "train-00000.jsonl").write_text(open(text_file).read())
    assert list(documents(DataConfig(source=str(tmp_path / "repo")))) == want
    txt = tmp_path / "txt"
    txt.mkdir()
    (txt / "a.txt").write_text("first doc")
    (txt / "b.txt").write_text("second doc")
    assert list(documents(DataConfig(source=str(txt)))) == ["first doc", "second doc"]


def test_bad_sources_fail_before_work(tmp_path, text_file):
    with pytest.raises(ConfigError, match=r"text_column='body'.*columns are \['id', 'text'\]"):
        documents(DataConfig(source=text_file, text_column="body"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="contains no text"):
        documents(DataConfig(source=str(empty)))
    with pytest.raises(ConfigError, match="does not exist"):
        documents(DataConfig(source=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ConfigError, match="context_size=1"):
        DataConfig(context_size=1)


def test_rank_sharding_partitions_windows(text_file):
    """Ranks must see disjoint windows whose union is the single-process stream."""
    cfg = DataConfig(source=text_file, context_size=16, part="all")
    tok = _tokenizer()
    single = [(i, w.tolist()) for i, w in TokenWindows(cfg, tok)]
    shards = [[(i, w.tolist()) for i, w in TokenWindows(cfg, tok, r, 3)] for r in range(3)]
    merged = sorted(x for s in shards for x in s)
    assert merged == single and len(single) > 10
    assert all(i % 3 == r for r, s in enumerate(shards) for i, _ in s)
    assert [w.tolist() for _, w in TokenWindows(cfg, tok).iter_from(5)] == [
        w for _, w in single[5:]
    ]


def test_held_out_windows_are_disjoint_from_training_windows(text_file):
    """Pins evaluation leaking into training: the parts partition the windows."""
    tok = _tokenizer()
    idx = {
        p: [
            i
            for i, _ in TokenWindows(
                DataConfig(source=text_file, context_size=16, part=p, eval_every=4), tok
            )
        ]
        for p in ("train", "eval", "all")
    }
    assert sorted(idx["train"] + idx["eval"]) == idx["all"]
    assert idx["eval"] == [i for i in idx["all"] if i % 4 == 3] and idx["eval"]
    # Ranks split the eval part evenly even when eval_every and world_size share a factor.
    per_rank = [
        len(
            list(
                TokenWindows(
                    DataConfig(source=text_file, context_size=16, part="eval", eval_every=4),
                    tok,
                    r,
                    2,
                )
            )
        )
        for r in range(2)
    ]
    assert abs(per_rank[0] - per_rank[1]) <= 1
