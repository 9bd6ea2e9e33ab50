"""Networks registered by name, in the manner of timm and torchvision.

``create_net("dnnet_resnet32_cifar10", pretrained=True)`` builds a network and,
on request, loads its shipped weights from ``nets/weights/<name>.pt`` with
``torch.load(..., weights_only=True)``.  Registering a name twice is an error.

Weights are checked before they are used: a file whose sha256 differs from the
one recorded for it (a catalog's ``weights_sha256``, passed as
``expected_sha256``, or a ``weights_sha256`` in the model card ``<stem>.json``
beside it) is refused, and so is a state_dict holding NaN or infinite values,
always, each with one :class:`CheckpointError`.

Network families of other installed distributions join the registry through
the entry-point group ``anytime.nets`` (``ENTRY_POINT_GROUP``): each entry
point names a builder callable (registered under the entry point's name) or
a module whose import registers builders with :func:`register_net`.  They are
loaded on the first :func:`list_nets` or :func:`create_net`, not on import.
A name claimed twice is refused with one :class:`RegistryError` naming both
sources, on every call until one of them is uninstalled; a plugin that fails
to load (its import raises, or it names neither a callable nor a module) is
skipped with a logged warning naming it, so one broken distribution does not
stop the others, and asking for a network it would have provided names the
failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import types
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from nets.dnnet import DNNet, DNNetConfig
from nets.errors import CheckpointError, ConfigError, DataError, RegistryError, UnknownNetError
from nets.resnet import ResNet, ResNetConfig

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

ENTRY_POINT_GROUP = "anytime.nets"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_SOURCES: dict[str, str] = {}  # name -> who registered it, for error messages


class _Plugins:
    """The state of loading the ``anytime.nets`` entry points (module docstring)."""

    loaded = False
    loading: str | None = None  # the entry point being loaded: the source of what registers now
    conflict: RegistryError | None = None  # a name claimed twice: refused on every call
    failures: list[str] = []  # plugins skipped, one line each


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder under ``name``; duplicate names are refused."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        where = f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"
        source = f"{_Plugins.loading} ({where})" if _Plugins.loading else where
        if name in _REGISTRY:
            raise RegistryError(f"a network named {name!r} is already registered by {_SOURCES[name]}; "
                                f"{source} registers it again")
        _REGISTRY[name] = builder
        _SOURCES[name] = source
        return builder

    return decorator


def list_nets() -> list[str]:
    """Names of every registered network, sorted (network plugins included)."""
    load_plugins()
    return sorted(_REGISTRY)


def load_plugins() -> None:
    """Load the network families other distributions declare under
    ``ENTRY_POINT_GROUP``, once (module docstring); later calls only repeat
    a conflict's :class:`RegistryError`."""
    if not _Plugins.loaded:
        _Plugins.loaded = True
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry in sorted(found, key=lambda e: (e.name, e.value)):
            _load_plugin(entry)
            if _Plugins.conflict is not None:
                break
    if _Plugins.conflict is not None:
        raise _Plugins.conflict


def _load_plugin(entry: metadata.EntryPoint) -> None:
    dist = getattr(entry, "dist", None)
    label = f"network plugin {entry.name!r}{f' of distribution {dist.name!r}' if dist is not None else ''}"
    before = set(_REGISTRY)
    _Plugins.loading = label
    try:
        target = entry.load()
        if not isinstance(target, types.ModuleType):
            if not callable(target):
                raise TypeError(f"{entry.value} is neither a builder callable nor a module")
            register_net(entry.name)(target)
    except RegistryError as exc:  # a name claimed twice: refuse, keep the registry as it was
        _forget(set(_REGISTRY) - before)
        _Plugins.conflict = exc
    except Exception as exc:  # noqa: BLE001 - whatever a third party's import raises, it is skipped
        _forget(set(_REGISTRY) - before)
        reason = f"{type(exc).__name__}: {_cut(str(exc), 160)}"
        _Plugins.failures.append(f"{label} ({entry.value}): {reason}")
        log.warning("skipping the %s (%s): it failed to load: %s", label, entry.value, reason)
    finally:
        _Plugins.loading = None


def _forget(names: set[str]) -> None:
    for name in names:
        _REGISTRY.pop(name, None)
        _SOURCES.pop(name, None)


def net_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name`` (network plugins included), or one
    :class:`UnknownNetError` listing the registered names."""
    load_plugins()
    if name not in _REGISTRY:
        failed = f"; network plugins that failed to load: {'; '.join(_Plugins.failures)}" if _Plugins.failures else ""
        raise UnknownNetError(f"unknown network {name!r}; registered: {', '.join(list_nets())}{failed}")
    return _REGISTRY[name]


BASELINES_DIR = WEIGHTS_DIR / "baselines"  # small separately trained models (issue 7's baselines)


def baseline_file(name: str, suffix: str = ".pt", runs: Path | str = "runs/baselines") -> Path:
    """A trained baseline's file (``.pt`` weights or ``.json`` card): its
    finished run under ``runs`` if there is one, else the shipped copy in
    ``nets/weights/baselines`` (which may not exist: callers check)."""
    run = Path(runs) / name / f"{name}{suffix}"
    return run if run.exists() else BASELINES_DIR / f"{name}{suffix}"


def finished_run(run_dir: str | Path) -> tuple[Path, dict]:
    """The weights and model card of a finished training run: the ``NAME.pt``
    beside its ``NAME.json`` that ``anytime train --out RUN_DIR`` writes at
    the end (a ``checkpoint.pt`` alone is an unfinished run).  The card
    records the data split the run trained on (``data.val`` images held out,
    ``train_config.seed``), which an evaluation must reuse.  Raises
    :class:`CheckpointError` when there is no finished run, or its card
    cannot be read."""
    run_dir = Path(run_dir)
    weights = next((p for p in sorted(run_dir.glob("*.pt")) if p.with_suffix(".json").is_file()), None)
    card = model_card(weights) if weights is not None else None
    if card is None:
        raise CheckpointError(f"{run_dir} holds no finished run (NAME.pt beside a readable NAME.json)")
    return weights, card


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def create_net(name: str, pretrained: bool = False, weights_sha256: str | None = None, **config) -> nn.Module:
    """Build the network registered as ``name``; ``config`` overrides its
    configuration fields.  ``pretrained`` loads the shipped weights, checked
    against ``weights_sha256`` when given (a catalog's record of them), into
    the configuration their model card records (``config`` still overrides
    it): shipped weights may come from a configuration other than the
    registered defaults (the long runs' pooled heads, ``head_pool``)."""
    builder = net_builder(name)
    path = weights_path(name)
    if pretrained:
        if not path.exists():
            raise CheckpointError(f"no shipped weights for {name!r} (expected {path})")
        config = {**card_config(model_card(path)), **config}
    try:
        model = builder(**config)
    except TypeError as exc:
        raise ConfigError(f"bad configuration for {name!r}: {exc}") from None
    if pretrained:
        load_weights(model, path, expected_sha256=weights_sha256)
    model.eval()
    return model


SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_CARD_BYTES = 16 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(path: str | Path) -> dict | None:
    """The model card beside weights ``path`` (``<stem>.json``, written by
    ``nets.train``), or None when there is none.  A card that cannot be read
    is logged and ignored: it is metadata, and the weights are still checked
    for non-finite values."""
    card = Path(path).with_suffix(".json")
    if not card.is_file():
        return None
    if card.stat().st_size > MAX_CARD_BYTES:  # a card is a few kB: never read a huge file whole
        log.warning("ignoring the model card %s: larger than %d bytes", card, MAX_CARD_BYTES)
        return None
    try:
        content = json.loads(card.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        log.warning("ignoring the unreadable model card %s: %s", card, exc.__class__.__name__)
        return None
    if not isinstance(content, dict):
        log.warning("ignoring the unreadable model card %s: %s", card, "not a JSON object")
        return None
    return content


def card_sha256(path: str | Path) -> str | None:
    """The ``weights_sha256`` that the model card beside weights ``path``
    (``<stem>.json``) records, or None when there is no card, it cannot be
    read (:func:`model_card`) or it records none."""
    card = model_card(path)
    recorded = None if card is None else card.get("weights_sha256")
    if recorded is not None and not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        raise CheckpointError(f"model card {Path(path).with_suffix('.json')}: weights_sha256 = {_short(recorded)} "
                              "is not a sha256 hex digest")
    return recorded


def card_config(card: dict | None) -> dict:
    """The configuration fields a model card records for its weights (what
    the registered builder takes; empty without a card)."""
    config = card.get("config") if isinstance(card, dict) and isinstance(card.get("config"), dict) else {}
    return {k: v for k, v in config.items() if k != "family"}


def create_trained_net(name: str, weights: str | Path, classes: Sequence[str] | None = None,
                       image_size: tuple[int, int] | None = None) -> nn.Module:
    """The network ``name`` as the model card beside ``weights`` records it
    (its configuration: classes, widths, ...), with those weights loaded.

    ``classes`` and ``image_size`` describe the data it is about to run on;
    a card that records other classes (names and order: label ``i`` must
    mean the same) or another image size is refused with one
    :class:`DataError`.  Without a card, the registered defaults are built
    with ``len(classes)`` classes."""
    card = model_card(weights) or {}
    config = card_config(card)
    if classes is not None:
        classes = list(classes)
        recorded = card.get("classes")
        if isinstance(recorded, list) and recorded != classes:
            raise DataError(f"{weights} was trained on the classes {_cut(', '.join(map(str, recorded)), 80)}; "
                            f"the data has {_cut(', '.join(classes), 80)} (names and order must match)")
        if config.get("num_classes", len(classes)) != len(classes):
            raise DataError(f"{weights} answers {config['num_classes']} classes; the data has {len(classes)}")
        config.setdefault("num_classes", len(classes))
    recorded_size = card.get("image_size")
    if image_size is not None and isinstance(recorded_size, list) and tuple(recorded_size) != tuple(image_size):
        raise DataError(f"{weights} was trained on {recorded_size[-1]}x{recorded_size[0]} images; "
                        f"the data's are {image_size[1]}x{image_size[0]}")
    model = create_net(name, **config)
    return load_weights(model, weights).eval()


def read_checkpoint(path: str | Path, expected_sha256: str | None = None) -> object:
    """``torch.load(path, weights_only=True)`` of a file that exists, matches
    ``expected_sha256`` when given, and unpickles; one :class:`CheckpointError`
    otherwise (torch raises several types for corrupt files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 is not None:
        if not (isinstance(expected_sha256, str) and SHA256_HEX.fullmatch(expected_sha256)):
            raise CheckpointError(f"expected sha256 {_short(expected_sha256)} of {path} is not a sha256 hex digest")
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise CheckpointError(f"{path} has sha256 {actual[:12]}..., not the recorded {expected_sha256[:12]}...: "
                                  "corrupt or replaced weights")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: "
                              f"{_cut(str(exc), 120)}") from None


def nonfinite_tensors(state: object, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``state`` (nested dicts, lists
    and tuples, as in optimizer states) holding NaN or infinite values."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return [] if bool(torch.isfinite(state).all()) else [prefix or "tensor"]
        return []
    if isinstance(state, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in state.items())
    elif isinstance(state, (list, tuple)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(state))
    else:
        return []
    return [name for key, value in items for name in nonfinite_tensors(value, key)]


def load_weights(model: nn.Module, path: str | Path, expected_sha256: str | None = None) -> nn.Module:
    """Load a plain ``state_dict`` (or a training checkpoint holding one) into
    ``model``, with one clear :class:`CheckpointError` when it is missing,
    corrupt, mismatched, not the recorded file or holds non-finite values.

    ``expected_sha256`` is the file's recorded sha256 (a catalog's
    ``weights_sha256``); without it, the model card beside the file is the
    reference when it records one.  Non-finite values are always refused."""
    path = Path(path)
    expected = expected_sha256 if expected_sha256 is not None else card_sha256(path) if path.is_file() else None
    state = read_checkpoint(path, expected)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path} does not hold a state_dict: {_cut(', '.join(not_tensors), 80)} are not tensors")
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite values in {len(bad)} tensors "
                              f"({_cut(', '.join(bad), 80)}): corrupt or diverged weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"checkpoint {path} does not fit this network's configuration: "
                              f"{_cut(detail, 300)}") from None
    return model


def _cut(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters: a message never prints a whole value."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: object) -> str:
    return _cut(repr(value), 60)


@register_net("dnnet_resnet32_cifar10")
def dnnet_resnet32_cifar10(**config) -> DNNet:
    """The shipped doubly nested ResNet-32 for CIFAR-10 (16 depths x 8 widths)."""
    return DNNet(DNNetConfig(**config))


@register_net("anytime_resnet32_cifar10")
def anytime_resnet32_cifar10(**config) -> DNNet:
    """Depth-only anytime ResNet-32 (BranchyNet / decision-gates baseline): dense
    full-width convolutions (one width group, so the causal mask is all ones) and
    an exit head after the stem and after every one of the 15 blocks."""
    return DNNet(DNNetConfig(**{"width_groups": 1, **config}))


@register_net("dnnet_tiny")
def dnnet_tiny(**config) -> DNNet:
    """A tiny doubly nested net for tests: 2 stages of 1 block, widths 4/8, G = 2."""
    defaults = dict(stage_widths=(4, 8), blocks_per_stage=1, width_groups=2)
    return DNNet(DNNetConfig(**{**defaults, **config}))


@register_net("resnet32_cifar10")
def resnet32_cifar10(**config) -> ResNet:
    """A plain ResNet-32 with the same stages and shortcuts as the nested net."""
    return ResNet(ResNetConfig(**config))


@register_net("resnet_tiny")
def resnet_tiny(**config) -> ResNet:
    defaults = dict(stage_widths=(4, 8), blocks_per_stage=1)
    return ResNet(ResNetConfig(**{**defaults, **config}))
