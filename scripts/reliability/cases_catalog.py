"""Reliability cases: corrupt catalogs, weights and training checkpoints, each
met as a user would meet it (``anytime select --catalog bad ...``, or a
library call that loads weights or resumes training).  Every case copies the
shipped files into its scratch folder and damages the copy; the shipped files
are never touched."""

from __future__ import annotations

import functools
import json
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from harness import REPO, Case

NESTED = REPO / "anytime" / "data" / "dnnet_resnet32_cifar10.catalog"
DEPTH_ONLY = REPO / "anytime" / "data" / "anytime_resnet32_cifar10.catalog"  # small: quick to rewrite
WEIGHTS = REPO / "nets" / "weights" / "dnnet_resnet32_cifar10.pt"
SELECT = ("select", "--catalog", "bad", "--macs", "20e6")
ALLOCATE = ("allocate", "--catalog", "bad", "--tenant", "a:10:50")


# ---- catalogs -----------------------------------------------------------------

def _copy(scratch: Path, source: Path = NESTED, name: str = "bad") -> Path:
    for suffix in (".json", ".npz"):
        shutil.copy(source.with_name(source.name + suffix), scratch / f"{name}{suffix}")
    return scratch / name


def _sha256(path: Path) -> str:
    from nets.registry import file_sha256

    return file_sha256(path)


def _json(change: Callable[[dict], None], source: Path = NESTED) -> Callable[[Path], None]:
    """setup: a copy of ``source`` whose JSON ``change`` edited (NaN and
    Infinity written as JSON's extensions, as Python's json does)."""

    def setup(scratch: Path) -> None:
        stem = _copy(scratch, source)
        meta = json.loads(stem.with_suffix(".json").read_text())
        change(meta)
        stem.with_suffix(".json").write_text(json.dumps(meta))

    return setup


def _json_text(text: str | bytes, source: Path = NESTED) -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        stem = _copy(scratch, source)
        data = text.encode() if isinstance(text, str) else text
        stem.with_suffix(".json").write_bytes(data)

    return setup


def _rehash(stem: Path) -> None:
    """Record the damaged archive's checksum, as a careful forger would."""
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["traces_sha256"] = _sha256(stem.with_suffix(".npz"))
    stem.with_suffix(".json").write_text(json.dumps(meta))


def _npz(change: Callable[[dict], None], source: Path = DEPTH_ONLY) -> Callable[[Path], None]:
    """setup: a copy of ``source`` whose arrays ``change`` edited, checksum recorded."""

    def setup(scratch: Path) -> None:
        stem = _copy(scratch, source)
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        change(arrays)
        np.savez_compressed(stem.with_suffix(".npz"), **arrays)
        _rehash(stem)

    return setup


def _npz_bytes(make: Callable[[bytes], bytes], source: Path = DEPTH_ONLY) -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        stem = _copy(scratch, source)
        npz = stem.with_suffix(".npz")
        npz.write_bytes(make(npz.read_bytes()))
        _rehash(stem)

    return setup


def _set(key: str, index: tuple, value, dtype=None) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        array = arrays[key].astype(dtype or arrays[key].dtype)
        array[index] = value
        arrays[key] = array

    return change


def _latency(value: float, fields=("p50_ms", "p90_ms", "segment_p50_ms", "head_p50_ms"), device: str | None = None):
    def change(meta: dict) -> None:
        for name, table in meta["latency"].items():
            if device is None or name == device:
                for key in fields:
                    table[key] = np.full(np.shape(table[key]), value).tolist()

    return change


def _cost(name: str, at: tuple[int, int], value) -> Callable[[dict], None]:
    return lambda meta: meta["costs"][name][at[0]].__setitem__(at[1], value)


def _lying_header(key: str, shape: tuple[int, ...]) -> Callable[[bytes], bytes]:
    """The archive with ``key``'s .npy header declaring ``shape`` over a few bytes."""

    def make(data: bytes) -> bytes:
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as source:
            members = {name: source.read(name) for name in source.namelist()}
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        members[f"{key}.npy"] = header.getvalue() + b"\0" * 64
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
            for name, member in members.items():
                target.writestr(name, member)
        return out.getvalue()

    return make


def _other_npz(scratch: Path) -> None:
    stem = _copy(scratch, DEPTH_ONLY)
    shutil.copy(NESTED.with_name(NESTED.name + ".npz"), stem.with_suffix(".npz"))


def _json_missing(scratch: Path) -> None:
    _copy(scratch).with_suffix(".json").unlink()


def _with_object_labels(data: bytes) -> bytes:
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["test/labels"] = np.array([*arrays["test/labels"].tolist()], dtype=object)
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


CASES: list[Case] = []


def _catalog(name: str, setup: Callable[[Path], None], argv: tuple[str, ...] = SELECT, status: int = 2) -> None:
    CASES.append(Case("catalog", name, status, argv, setup=setup))


# the catalogs
_catalog("every latency -1 ms (select printed 'latency -1.00 ms ... -15.000 mJ')", _json(_latency(-1.0)))
_catalog("every latency 0 ms", _json(_latency(0.0)), ALLOCATE)
_catalog("one measured p50 latency 0", _json(lambda m: m["latency"]["cpu-local"]["p50_ms"][0][3].__setitem__(2, 0)))
_catalog("segment latency NaN", _json(_latency(float("nan"), ("segment_p50_ms",), "cpu-local")), ALLOCATE)
_catalog("head latency -Infinity", _json(_latency(float("-inf"), ("head_p50_ms",), "phone-npu")))
_catalog("latency a string", _json(lambda m: m["latency"]["cpu-local"]["p90_ms"][1][0].__setitem__(0, "slow")))
_catalog("p90 below p50", _json(lambda m: m["latency"]["cpu-local"]["p90_ms"][0][5].__setitem__(5, 1e-6)), ALLOCATE)
_catalog("batch sizes [32, 1]", _json(lambda m: m["latency"]["cpu-local"].update(batch_sizes=[32, 1])))
_catalog("measured: \"yes\"", _json(lambda m: m["latency"]["cpu-local"].update(measured="yes")))
_catalog("latency key differs from its device", _json(lambda m: m["latency"]["cpu-local"].update(device="gpu")))
_catalog("no latency table at all", _json(lambda m: m.update(latency={})), ALLOCATE)
_catalog("negative MACs", _json(_cost("macs", (3, 2), -100)))
_catalog("every MAC count 0", _json(lambda m: m["costs"].update(macs=np.zeros((16, 8), int).tolist())))
_catalog("MACs falling with depth", _json(_cost("macs", (10, 4), 1000)))
_catalog("parameters falling with width", _json(_cost("params", (10, 7), 10)), ALLOCATE)
_catalog("exit-path MACs below the sub-network's", _json(_cost("exit_path_macs", (15, 7), 1)))
_catalog("parameters 1.5", _json(_cost("params", (0, 0), 1.5)))
_catalog("peak memory 1e30", _json(_cost("peak_activation_bytes_measured", (0, 0), 1e30)))
_catalog("a cost table that is a string", _json(lambda m: m["costs"].update(feature_bytes="big")))
_catalog("a cost table missing", _json(lambda m: m["costs"].pop("head_macs")))
_catalog("negative exit MACs of the gates", _json(lambda m: m["exit_policies"]["gate"]["extra_macs"][4]
                                                  .__setitem__(3, -20)))
_catalog("exit scores for an unknown split", _json(lambda m: m["exit_policies"]["support"].update(splits=["train"])))
_catalog("one class", _json(lambda m: m.update(classes=["cat"])))
_catalog("duplicated classes", _json(lambda m: m.update(classes=["cat"] * 10)))
_catalog("10^9 depths declared (never ended before)", _json(lambda m: m.update(depths=10 ** 9)))
_catalog("1000 depths x 1000 widths declared", _json(lambda m: m.update(depths=1000, widths=1000)))
_catalog("0 widths", _json(lambda m: m.update(widths=0)))
_catalog("depths \"16\" (a string)", _json(lambda m: m.update(depths="16")))
_catalog("depths 16.5", _json(lambda m: m.update(depths=16.5)))
_catalog("10^9 test samples declared", _json(lambda m: m["splits"].update(test=10 ** 9)))
_catalog("-1 test samples", _json(lambda m: m["splits"].update(test=-1)))
_catalog("9,999 test samples declared for 10,000 stored", _json(lambda m: m["splits"].update(test=9999)))
_catalog("subnet keys cut short", _json(lambda m: m.update(subnets=m["subnets"][:10])))
_catalog("weights_sha256 not a digest", _json(lambda m: m.update(weights_sha256="abc")))
_catalog("schema version 2", _json(lambda m: m.update(schema_version=2)))
_catalog("JSON cut in the middle", _json_text(NESTED.with_name(NESTED.name + ".json").read_text()[:5000]))
_catalog("JSON nested 100,000 deep", _json_text("[" * 100_000 + "]" * 100_000))
_catalog("JSON with a 10,000-digit integer", _json_text('{"schema_version": 1' + "0" * 10_000 + "}"))
_catalog("JSON that is a list", _json_text("[1, 2, 3]"))
_catalog("JSON of binary garbage", _json_text(bytes(range(256)) * 4))
_catalog("catalog JSON missing", _json_missing)
_catalog("traces of another catalog (checksum differs)", _other_npz)
# the archive, damaged and its checksum recorded (depth-only catalog: quick to rewrite)
_catalog("test label 10 of 10 classes", _npz(_set("test/labels", (7,), 10)))
_catalog("val prediction 12", _npz(_set("val/prediction", (3, 2, 0), 12)), ALLOCATE)
_catalog("gate's prediction 200", _npz(_set("test/exit/gate/prediction", (0, 5, 0), 200)))
_catalog("a NaN exit threshold", _npz(_set("settings/thresholds", (5, 0), np.nan)))
_catalog("a -inf exit threshold", _npz(_set("settings/thresholds", (5, 0), -np.inf)))
_catalog("a finite threshold past the path's depth", _npz(_set("settings/thresholds", (0, 15), 0.5)))
_catalog("exit setting of sub-network 999", _npz(_set("settings/subnet", (2,), 999)))
_catalog("exit setting of an unknown policy", _npz(_set("settings/policy", (2,), "telepathy")))
_catalog("accuracy drop 2.0", _npz(_set("settings/accuracy_drop", (2,), 2.0)))
_catalog("probability codebook value 1.5", _npz(_set("codebook/top1_prob", (-1,), 1.5)))
_catalog("entropy codebook NaN", _npz(_set("codebook/entropy", (0,), np.nan)))
_catalog("margin codebook missing", _npz(lambda a: a.pop("codebook/margin")))
_catalog("codes beyond a cut codebook", _npz(lambda a: a.update({"codebook/top1_prob": a["codebook/top1_prob"][:10]})))
_catalog("labels header declaring 10^12 entries", _npz_bytes(_lying_header("test/labels", (10 ** 12,))))
_catalog("predictions stored as float32", _npz(lambda a: a.update({"test/prediction":
                                                                     a["test/prediction"].astype(np.float32)})))
_catalog("labels as a pickled object array", _npz_bytes(_with_object_labels))
_catalog("archive cut in half", _npz_bytes(lambda data: data[: len(data) // 2]))
_catalog("archive that is text", _npz_bytes(lambda data: b"not a zip archive\n" * 100))
_catalog("gate scores missing", _npz(lambda a: a.pop("val/exit/gate/score")))
# other commands that read catalogs
_catalog("plot-catalog of negative latencies", _json(_latency(-1.0)), ("plot-catalog", "bad", "--out", "figs"))
_catalog("exits report of NaN thresholds", _npz(_set("settings/thresholds", (5, 0), np.nan)),
         ("exits", "bad", "--report", "rep", "--quiet"))
_catalog("simulate on zero MACs", _json(lambda m: m["costs"].update(macs=np.zeros((16, 8), int).tolist())),
         ("simulate", "{repo}/scenarios/phone.yaml", "--catalog", "bad", "--out", "o", "--duration-s", "2",
          "--policies", "nested", "--no-report", "--quiet"))
# intact copies still work
_catalog("an intact copy of the shipped catalog", lambda s: _copy(s) and None, ALLOCATE, 0)
_catalog("an intact copy of the depth-only catalog", lambda s: _copy(s, DEPTH_ONLY) and None, SELECT, 0)


# ---- weights -------------------------------------------------------------------

def _flipped(scratch: Path) -> None:
    data = bytearray(WEIGHTS.read_bytes())
    for offset in (len(data) // 3, len(data) // 2):
        data[offset] ^= 0xFF
    (scratch / "flipped.pt").write_bytes(bytes(data))


def _load_with_catalog(name: str) -> Callable[[Path], object]:
    def call(scratch: Path) -> object:
        from anytime.catalog import load_catalog

        return load_catalog(NESTED).load_net(scratch / name if name else None)

    return call


def _load_with_catalog_sha(name: str) -> Callable[[Path], object]:
    def call(scratch: Path) -> object:
        from nets import create_net
        from nets.registry import load_weights

        recorded = json.loads(NESTED.with_name(NESTED.name + ".json").read_text())["weights_sha256"]
        return load_weights(create_net("dnnet_resnet32_cifar10"), scratch / name, expected_sha256=recorded)

    return call


def _tiny_state():
    import torch

    from nets import create_net

    torch.manual_seed(0)
    return create_net("dnnet_tiny").state_dict()


def _tiny(poison: Callable[[dict], object] | None = None, card: object = None) -> Callable[[Path], None]:
    """setup: ``w.pt``, the tiny net's weights (``poison`` may replace them), with a model card beside."""

    def setup(scratch: Path) -> None:
        import torch

        state = _tiny_state()
        obj = poison(state) if poison is not None else state
        torch.save(obj, scratch / "w.pt")
        if card is not None:
            text = card(scratch / "w.pt") if callable(card) else card
            (scratch / "w.json").write_text(text)

    return setup


def _tiny_bytes(make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        _tiny()(scratch)
        (scratch / "w.pt").write_bytes(make((scratch / "w.pt").read_bytes()))

    return setup


def _load_tiny(scratch: Path, **config) -> object:
    from nets import create_net
    from nets.registry import load_weights

    return load_weights(create_net("dnnet_tiny", **config), scratch / "w.pt")


def _all_nan(state: dict) -> dict:
    import torch

    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


def _one_inf(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")
    return state


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def _card_then_flip(scratch: Path) -> None:
    """setup: the tiny weights, a model card recording their sha256, then one bit flipped."""
    _tiny(card=lambda p: json.dumps({"weights_sha256": _sha256(p)}))(scratch)
    data = bytearray((scratch / "w.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (scratch / "w.pt").write_bytes(bytes(data))


def _weights(name: str, setup, call, status: int = 2) -> None:
    CASES.append(Case("weights", name, status, call=call, setup=setup))


_weights("shipped weights, 2 bytes flipped, against the catalog's sha256", _flipped, _load_with_catalog_sha("flipped.pt"))
_weights("shipped weights, 2 bytes flipped, Catalog.load_net", _flipped, _load_with_catalog("flipped.pt"))
_weights("shipped weights against a wrong sha256", None,
         lambda s: __import__("nets").create_net("dnnet_resnet32_cifar10", pretrained=True, weights_sha256="0" * 64))
_weights("all-NaN weights", _tiny(_all_nan), _load_tiny)
_weights("one +inf weight", _tiny(_one_inf), _load_tiny)
_weights("NaN weights inside a training checkpoint", _tiny(lambda s: {"model": _all_nan(s)}), _load_tiny)
_weights("empty weights file", _tiny_bytes(lambda d: b""), _load_tiny)
_weights("weights file cut in half", _tiny_bytes(lambda d: d[: len(d) // 2]), _load_tiny)
_weights("weights file of garbage", _tiny_bytes(lambda d: bytes(range(256)) * 8), _load_tiny)
_weights("weights pickling a function call", _tiny_bytes(lambda d: pickle.dumps(_Evil())), _load_tiny)
_weights("weights file holding a list", _tiny(lambda s: [1, 2, 3]), _load_tiny)
_weights("state_dict with a non-tensor value", _tiny(lambda s: {**s, next(iter(s)): [0.0]}), _load_tiny)
_weights("weights of another configuration", _tiny(), functools.partial(_load_tiny, width_groups=1))
_weights("weights differing from their model card's sha256", _card_then_flip, _load_tiny)
_weights("model card with a malformed sha256", _tiny(card='{"weights_sha256": 12}'), _load_tiny)
_weights("unreadable model card beside intact weights (ignored)", _tiny(card="{not json"), _load_tiny, 0)
_weights("intact shipped weights through Catalog.load_net", None, _load_with_catalog(""), 0)


# ---- training checkpoints ------------------------------------------------------

def _fake_cifar(root: Path) -> None:
    """A small fake CIFAR-10 in the official python-batches layout (as tests/conftest.py)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def images(labels):
        base = rng.integers(0, 60, size=(len(labels), 3, 32, 32))
        return (base + labels[:, None, None, None] * 19).clip(0, 255).astype(np.uint8).reshape(len(labels), -1)

    train_y, test_y = np.arange(200) % 10, np.arange(50) % 10
    train_x, test_x = images(train_y), images(test_y)
    for i in range(5):
        part = slice(i * 40, (i + 1) * 40)
        batch = {b"data": train_x[part], b"labels": train_y[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": test_x, b"labels": test_y.tolist()}))


def _train_config():
    from nets.train import TrainConfig

    return TrainConfig(epochs=1, batch_size=32, lr=0.05, max_batches=1, threads=1, precision="float32")


@functools.cache
def _valid_run() -> Path:
    """One finished tiny run (made once per harness process): its checkpoint is the one damaged."""
    import torch

    from nets import create_net
    from nets.data import load_cifar10
    from nets.train import train

    folder = Path(tempfile.mkdtemp(prefix="reliability-run-"))
    _fake_cifar(folder / "cifar")
    torch.manual_seed(0)
    train(create_net("dnnet_tiny"), "tiny", load_cifar10(folder / "cifar", val_size=20), _train_config(),
          folder / "run", progress=False)
    return folder


def _checkpoint(change: Callable[[dict], object] | None = None,
                raw: Callable[[bytes], bytes] | None = None) -> Callable[[Path], None]:
    """setup: the fake data and the run folder, its checkpoint damaged."""

    def setup(scratch: Path) -> None:
        import torch

        shutil.copytree(_valid_run(), scratch, dirs_exist_ok=True)
        path = scratch / "run" / "checkpoint.pt"
        if change is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            torch.save(change(state), path)
        if raw is not None:
            path.write_bytes(raw(path.read_bytes()))

    return setup


def _resume(scratch: Path) -> object:
    import torch

    from nets import create_net
    from nets.data import load_cifar10
    from nets.train import train

    torch.set_num_threads(1)
    return train(create_net("dnnet_tiny"), "tiny", load_cifar10(scratch / "cifar", val_size=20), _train_config(),
                 scratch / "run", resume=True, progress=False)


def _poison_model(state: dict) -> dict:
    state["model"] = _all_nan(state["model"])
    return state


def _other_net(state: dict) -> dict:
    from nets import create_net

    state["model"] = create_net("dnnet_tiny", width_groups=1).state_dict()
    return state


def _resume_case(name: str, setup, status: int = 2) -> None:
    CASES.append(Case("checkpoint", name, status, call=_resume, setup=setup, timeout_s=120))


_resume_case("resume from an empty checkpoint", _checkpoint(raw=lambda d: b""))
_resume_case("resume from a checkpoint cut in half", _checkpoint(raw=lambda d: d[: len(d) // 2]))
_resume_case("resume from a checkpoint of garbage", _checkpoint(raw=lambda d: bytes(range(256)) * 8))
_resume_case("resume from a checkpoint pickling a function call", _checkpoint(raw=lambda d: pickle.dumps(_Evil())))
_resume_case("resume from a checkpoint with NaN weights", _checkpoint(_poison_model))
_resume_case("resume from a checkpoint without its optimizer", _checkpoint(lambda s: {k: v for k, v in s.items()
                                                                                    if k != "optimizer"}))
_resume_case("resume from a checkpoint holding a list", _checkpoint(lambda s: [1, 2]))
_resume_case("resume from a checkpoint of another configuration", _checkpoint(_other_net))
_resume_case("resume from a checkpoint whose history is not JSON", _checkpoint(lambda s: {**s, "history": "[{"}))
_resume_case("resume from a checkpoint whose epoch is a string", _checkpoint(lambda s: {**s, "epoch": "one"}))
_resume_case("resume from an intact checkpoint", _checkpoint(), 0)
