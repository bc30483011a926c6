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


def check_fits(cfg: SAEConfig, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """The tensors named in `shapes` are exactly the ones an SAE of `cfg` holds, shape for
    shape, so that nothing of the size a config claims is allocated before the weights are seen
    to match it. The expected shapes come from the SAE itself built on the meta device (shapes
    only, no memory); `where` names the weights file in error messages."""
    try:
        model = SAE(cfg, device="meta")
    except (RuntimeError, OverflowError) as e:  # sizes past what any tensor can hold
        raise ValueError(f"{where}: its config describes an SAE that cannot exist ({e}).") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = {"threshold"} if cfg.architecture in ("batchtopk", "matryoshka") else set()
    missing = sorted(set(expected) - set(shapes) - optional)
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where} does not fit a {cfg.architecture} SAE: missing {missing}, unexpected {extra}."
        )
    sizes = f"d_in={cfg.d_in}, d_sae={cfg.d_sae}" + (f", d_out={cfg.d_out}" if cfg.d_out else "")
    for name, shape in expected.items():
        if name in shapes and tuple(shapes[name]) != shape:
            raise ValueError(
                f"{where} does not match its config: size mismatch for {name}: the file holds "
                f"{list(shapes[name])}, the config ({sizes}) needs {list(shape)}."
            )


def assemble(cfg: SAEConfig, state: dict[str, Tensor], metadata: dict, where: str) -> SAE:
    """An SAE holding `state` exactly; `where` names the weights file in error messages.
    `check_fits` runs first, so the SAE built is never larger than the weights given."""
    check_fits(cfg, {k: tuple(v.shape) for k, v in state.items()}, where)
    model = SAE(cfg, dtype=state["W_enc"].dtype)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        msg = str(e).splitlines()[-1].strip()
        raise ValueError(f"{where} does not match its config: {msg}") from None
    model.metadata = metadata
    model.cfg = LoadedConfig.of(cfg, metadata)
    return model
