"""Tiny Hugging Face models built from a config (random weights, no download), one per family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

FAMILIES = ["bert", "gpt2", "gpt_neox", "llama"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders learn an overcomplete dictionary of features.",
    "def add(a, b):\n    return a + b",
    "Every window is full length and no token is lost or duplicated.",
] * 8


def _bpe_tokenizer(bos: str, eos: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[bos, eos, "<pad>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>"
    )


def _build(family: str, path: str) -> None:
    import transformers as tf

    from sae.activations.capture import resolve_model_path

    torch.manual_seed(0)
    small = dict(num_hidden_layers=3, num_attention_heads=2, hidden_size=32, intermediate_size=64)
    if family == "bert":
        tok = tf.AutoTokenizer.from_pretrained(resolve_model_path("builtin"))
        model = tf.BertModel(
            tf.BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=64, **small)
        )
    elif family == "gpt2":
        tok = _bpe_tokenizer("<|endoftext|>", "<|endoftext|>")
        cfg = tf.GPT2Config(vocab_size=len(tok), n_layer=3, n_head=2, n_embd=32, n_positions=64)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "gpt_neox":
        tok = _bpe_tokenizer("<s>", "</s>")
        cfg = tf.GPTNeoXConfig(vocab_size=len(tok), max_position_embeddings=64, **small)
        model = tf.GPTNeoXForCausalLM(cfg)
    elif family == "llama":
        tok = _bpe_tokenizer("<s>", "</s>")
        cfg = tf.LlamaConfig(
            vocab_size=len(tok), max_position_embeddings=64, num_key_value_heads=2, **small
        )
        model = tf.LlamaForCausalLM(cfg)
    else:
        raise ValueError(family)
    if family != "bert":
        model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)


REPOSITORY = Path(__file__).resolve().parents[1]
TOOL_CACHES = frozenset(
    {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".venv", "venv"}
)
"""Folders the tools write in (Python's bytecode, pytest's and Hypothesis's caches) or a local
environment: not what a test wrote, and not walked."""


def repository_files(root: Path = REPOSITORY) -> dict[str, tuple[int, int]]:
    """Every file under `root` outside TOOL_CACHES: relative path -> (size, mtime in ns)."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in TOOL_CACHES]
        for name in names:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except OSError:  # removed meanwhile
                continue
            files[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return files


def repository_changes(before: dict, after: dict) -> list[str]:
    """'added x', 'removed y', 'changed z' between two `repository_files` listings."""
    return sorted(
        [f"added {p}" for p in after.keys() - before.keys()]
        + [f"removed {p}" for p in before.keys() - after.keys()]
        + [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    )


@pytest.fixture(scope="session", autouse=True)
def _repository_unchanged():
    """Nothing a test does writes under the repository: the files there (a run the README's
    first command left in checkpoints/default included) are listed before the session and
    compared after it; any difference is an error of the session's last test."""
    before = repository_files()
    yield
    changes = repository_changes(before, repository_files())
    assert not changes, f"the tests wrote under the repository {REPOSITORY}: {changes[:20]}"


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in an empty folder of its own, so a relative default (`sae train`'s
    out=checkpoints/default, `sae harvest`'s caches/default) never lands in, or collides with, the
    folder pytest was started from: a clone where `sae train` already wrote checkpoints/default
    made three hostile-input tests fail with 'already holds a run'."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """The built-in corpus cache goes to a folder of this test session, not the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_CACHE_DIR", str(tmp_path_factory.mktemp("sae_cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _float32_models():
    """`model.dtype: auto` resolves to float32 in tests whatever the CPU, so figures and
    tolerances do not depend on the machine (tests/test_hardware.py covers the bf16 choice)."""
    import sae.config.hardware

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sae.config.hardware, "CPU_BF16_CHECKS", ())
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """family -> folder of a tiny random-weight model saved with save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for family in FAMILIES:
        path = str(root / family)
        _build(family, path)
        paths[family] = path
    return paths


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "docs.jsonl"
    import json

    with open(path, "w") as f:
        for i, line in enumerate(CORPUS * 4):
            f.write(json.dumps({"text": f"{i}: {line}", "id": i}) + "\n")
    return str(path)


@pytest.fixture
def one_torch_thread():
    """Run a test's kernels on one thread, restored afterwards. On a shared 2-core machine
    OpenMP threads spin-waiting on each other made small-kernel tests up to 8x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def identity_sae(d: int):
    """A ReLU SAE that reconstructs exactly: x = relu(x) - relu(-x), latents ±I (d_sae = 2 d)."""
    from sae.model.sae import SAE, SAEConfig

    s = SAE(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([eye, -eye], 1))
        s.W_dec.copy_(torch.cat([eye, -eye], 0))
        s.b_enc.zero_()
        s.b_dec.zero_()
    return s


def sae_with_decoder(W_dec_MD: torch.Tensor, k: int = 3):
    """A TopK SAE whose decoder rows are `W_dec_MD` and whose encoder is their transpose."""
    from sae.model.sae import SAE, SAEConfig

    m, d = W_dec_MD.shape
    s = SAE(SAEConfig(architecture="topk", d_in=d, d_sae=m, k=k))
    with torch.no_grad():
        s.W_dec.copy_(W_dec_MD)
        s.W_enc.copy_(W_dec_MD.T)
        s.b_enc.zero_()
        s.b_dec.zero_()
    return s
