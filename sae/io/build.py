"""The last step of every loader: our config, a state dict in SAELens names and the metadata
become one `SAE`, with the names and shapes checked and the facts of the metadata on `cfg`."""

from __future__ import annotations

from dataclasses import asdict

from torch import Tensor

from sae.model.sae import SAE, SAEConfig


class LoadedConfig(SAEConfig):
    """`SAEConfig` of a loaded SAE, plus where it reads from as attributes: `hook_name`,
    `model_name`, ... (None when the folder does not record them).

    Not a dataclass of its own: `asdict`, `replace` and equality see SAEConfig's fields only, and
    the facts are read live from the SAE's `metadata` dict, so editing one edits the other."""

    metadata: dict

    @classmethod
    def of(cls, cfg: SAEConfig, metadata: dict) -> LoadedConfig:
        out = cls(**asdict(cfg))
        out.metadata = metadata
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SAEConfig) and asdict(self) == asdict(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like SAEConfig

    def _meta(self, key: str):
        return getattr(self, "metadata", {}).get(key)

    @property
    def hook_name(self) -> str | None:
        """Where the SAE reads its input (ours, a module path or a TransformerLens name)."""
        return self._meta("hook_name")

    @property
    def target_hook_name(self) -> str | None:
        """Transcoders: where the reconstruction target is read."""
        return self._meta("target_hook_name")

    @property
    def model_name(self) -> str | None:
        """The model the SAE was trained on (a Hub name or path)."""
        return self._meta("model_name")


def assemble(cfg: SAEConfig, state: dict[str, Tensor], metadata: dict, where: str) -> SAE:
    """An SAE holding `state` exactly; `where` names the weights file in error messages."""
    model = SAE(cfg, dtype=state["W_enc"].dtype)
    expected = set(model.state_dict())
    optional = {"threshold"} if cfg.architecture in ("batchtopk", "matryoshka") else set()
    missing = sorted(expected - set(state) - optional)
    extra = sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"{where} does not fit a {cfg.architecture} SAE: missing {missing}, unexpected {extra}."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        msg = str(e).splitlines()[-1].strip()
        raise ValueError(f"{where} does not match its config: {msg}") from None
    model.metadata = metadata
    model.cfg = LoadedConfig.of(cfg, metadata)
    return model
