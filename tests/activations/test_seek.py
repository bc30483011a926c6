"""Resume of a live run seeks to a saved text position instead of re-reading the text.

Pins the defect: a resume re-streamed and re-tokenized every document before the cursor, so its
cost grew with how far the run got."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sae.activations.sources import LiveSource
from sae.activations.store import ActivationStore
from sae.activations.text import TokenWindows, pack_with_positions
from sae.config.schema import DataConfig, ModelConfig, StoreConfig


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(3, 99), max_size=30), max_size=15),
    ctx=st.integers(2, 13),
    bos=st.sampled_from(["window", "document", "none"]),
    sep=st.sampled_from([2, None]),
)
def test_packing_restarted_at_a_position_yields_the_same_windows(docs, ctx, bos, sep):
    keyed = list(enumerate(docs))
    full = list(pack_with_positions(keyed, ctx, 1, sep, bos))
    for k, (_, (key, offset)) in enumerate(full):
        again = pack_with_positions(keyed[key:], ctx, 1, sep, bos, first_offset=offset)
        assert [w for w, _ in again] == [w for w, _ in full[k:]]


class _CountingTokenizer:
    """The real tokenizer, counting the documents it is asked to tokenize."""

    def __init__(self, tok):
        self.tok, self.docs = tok, 0

    def __call__(self, texts, **kw):
        self.docs += len(texts)
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __setattr__(self, name, value):
        if name in ("tok", "docs"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.tok, name, value)


@pytest.mark.parametrize(
    ("part", "rank", "world"), [("train", 0, 1), ("eval", 1, 2), ("all", 2, 3)]
)
def test_token_windows_seek(text_file, part, rank, world):
    from transformers import AutoTokenizer

    from sae.activations.capture import resolve_model_path

    tok = _CountingTokenizer(AutoTokenizer.from_pretrained(resolve_model_path("builtin")))
    cfg = DataConfig(source=text_file, context_size=12, part=part, eval_every=3)
    tw = TokenWindows(cfg, tok, rank, world)
    full, positions = [], {}
    for i, w in tw.iter_from(0):
        full.append((i, w.tolist()))
        positions[i] = tw.position
    read_all = tok.docs
    i, _ = full[len(full) * 3 // 4]
    tok.docs = 0
    seeked = [
        (j, w.tolist()) for j, w in TokenWindows(cfg, tok, rank, world).iter_from(i, positions[i])
    ]
    assert seeked == [x for x in full if x[0] >= i]
    assert tok.docs < read_all / 2  # the first three quarters were skipped, not tokenized


def test_live_store_state_carries_the_text_position(tiny_models, text_file):
    model_cfg = ModelConfig(name=tiny_models["gpt2"], hooks=["resid_post.1"], batch_windows=4)
    data_cfg = DataConfig(source=text_file, context_size=16)
    cfg = StoreConfig(buffer_tokens=256, batch_size=64)
    store = ActivationStore(LiveSource(model_cfg, data_cfg, cfg), cfg)
    it = iter(store)
    for _ in range(12):
        next(it)
    state = store.state_dict()
    assert state["first_chunk_cursor"] > 0 and state["first_chunk_position"][0] > 0
    src = LiveSource(model_cfg, data_cfg, cfg)
    ActivationStore(src, cfg, state)
    assert src.position(state["first_chunk_cursor"]) == state["first_chunk_position"]
