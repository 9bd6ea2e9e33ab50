"""Run an exported sub-network with its exits: the driver of ``anytime export``.

This file is copied into every export folder as ``driver.py`` and runs there
on its own: it needs torch for the ``.pt2`` programs, or onnxruntime and numpy
for the ``.onnx`` ones, and nothing of the project that wrote it.  It reads the
folder's ``manifest.json`` (format: ``docs/FORMATS.md``, "Exported
sub-networks") and runs the exit loop of the project's ``AnytimeRunner``:
segment by segment, each depth's exit program gives the head's logits, the
policy's signal and the answer; the signal is rounded as the catalog stored
it (to float16, then floored to the catalog's codebook), so decisions
reproduce the traces the thresholds were calibrated on; a sample leaves when
its score reaches the depth's threshold, and the last depth always answers.
A depth without a threshold (``null``: +inf) has no exit, and its exit
program is not run.

As a library (from the export folder)::

    from driver import load
    result = load(".").run(images)  # float32 [N, C, H, W] in [0, 1]
    result["prediction"], result["exit_depth"], result["logits"]

As a command::

    python driver.py images.npy [--onnx] [--no-exits]   # or images.pt
    python driver.py --random 8                         # random images

It prints one JSON object: per sample the class index and name and the
1-based depth that answered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "anytime-export"
FORMAT_VERSION = 1


class DriverError(Exception):
    """The folder is not an export this driver reads, or the input is bad."""


def read_manifest(folder: str | Path) -> dict:
    """The export's manifest, its format and version checked."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DriverError(f"{path} is not an anytime export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DriverError(f"{path} has format version {manifest.get('format_version')!r}; "
                          f"this driver reads {FORMAT_VERSION}")
    return manifest


class _Backend:
    """Loads programs and does the little tensor arithmetic of the exit loop,
    in torch (``.pt2``) or numpy (``.onnx`` through onnxruntime)."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind
        if kind == "torch":
            import torch

            self.lib = torch
        elif kind == "onnx":
            import numpy
            import onnxruntime

            self.lib, self.ort = numpy, onnxruntime
        else:
            raise DriverError(f"unknown backend {kind!r}; use 'torch' or 'onnx'")

    def program(self, files: dict):
        """A callable: tensors in, a tuple of tensors out."""
        key = "pt2" if self.kind == "torch" else "onnx"
        if not files.get(key):
            raise DriverError(f"this export has no {key} programs (written without the ONNX exporter?)")
        path = self.folder / files[key]
        if self.kind == "torch":
            module = self.lib.export.load(str(path)).module()

            def run(x):
                with self.lib.inference_mode():
                    out = module(x)
                return out if isinstance(out, tuple) else (out,)
            return run
        session = self.ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: tuple(session.run(None, {name: x}))

    def array(self, values, dtype: str):
        return self.lib.asarray(values, dtype=getattr(self.lib, dtype))

    def stored(self, signal, codebook):
        """The signal as the catalog stores it: float16, then floored to the codebook."""
        lib = self.lib
        if self.kind == "torch":
            values = signal.half().float()
            if codebook is None:
                return values
            codes = lib.searchsorted(codebook, values.contiguous(), right=True) - 1
            return codebook[codes.clamp(0, len(codebook) - 1)]
        values = signal.astype(lib.float16).astype(lib.float32)
        if codebook is None:
            return values
        codes = lib.searchsorted(codebook, values, side="right") - 1
        return codebook[lib.clip(codes, 0, len(codebook) - 1)]

    def nonzero(self, mask):
        return mask.nonzero()[0] if self.kind == "onnx" else mask.nonzero().squeeze(1)


class ExportedSubnet:
    """An exported sub-network: ``run(images)`` classifies a batch, with the
    exit policy of the manifest when it has one (and ``exits``), else with
    the whole sub-network."""

    def __init__(self, folder: str | Path, backend: str = "torch", exits: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.backend = _Backend(self.folder, backend)
        self.classes = list(self.manifest["classes"])
        self.exits = self.manifest.get("exits") if exits else None
        if self.exits is None:
            self.whole = self.backend.program(self.manifest["programs"]["subnet"])
            return
        exits = self.exits
        self.segments = [self.backend.program(files) for files in exits["segments"]]
        self.exit_programs = [self.backend.program(files) for files in exits["exits"]]
        never = float("inf")
        self.thresholds = self.backend.array([never if t is None else t for t in exits["thresholds"]], "float32")
        self.placed = [t is not None for t in exits["thresholds"]]  # no threshold (+inf): no exit there, not evaluated
        rounding = exits["rounding"]
        codebook = rounding.get("codebook")
        self.codebook = None if codebook is None else self.backend.array(codebook, "float32")
        self.sign = float(exits["score_sign"])

    def run(self, images, deadline_s: float | None = None) -> dict:
        """``images`` float32 ``[N, C, H, W]`` in [0, 1] (a torch tensor, or a
        numpy array for ONNX).  Returns per sample ``prediction`` (class
        index, -1 when a deadline left it without an answer), ``exit_depth``
        (1-based, 0: none) and the answering exit's ``logits``.  With
        ``deadline_s`` (seconds of wall time) it is an anytime predictor:
        samples still running when time is up keep the last exit's answer."""
        expected = [int(n) for n in self.manifest["input"]["shape"][1:]]
        if len(images.shape) != 4 or list(images.shape[1:]) != expected or len(images) == 0:
            raise DriverError(f"expected images of shape [N >= 1, {', '.join(map(str, expected))}], "
                              f"got {list(images.shape)}")
        if self.exits is None:
            (logits,) = self.whole(images)
            depth = self.manifest["subnet"]["depth"]
            return {"prediction": logits.argmax(-1), "exit_depth": self._full(len(images), depth, "int64"),
                    "logits": logits}
        return self._exit_loop(images, deadline_s)

    def _full(self, n: int, value, dtype: str):
        lib = self.backend.lib
        return lib.full((n,), value, dtype=getattr(lib, dtype))

    def _exit_loop(self, images, deadline_s: float | None) -> dict:
        start = time.perf_counter()
        lib, n = self.backend.lib, len(images)
        prediction = self._full(n, -1, "int64")
        exit_depth = self._full(n, 0, "int64")
        logits_out = lib.zeros((n, len(self.classes)), dtype=lib.float32)
        running = lib.arange(n)
        h, last = images, len(self.segments) - 1
        for depth, (segment, exit_program) in enumerate(zip(self.segments, self.exit_programs)):
            if deadline_s is not None and time.perf_counter() - start >= deadline_s:
                break
            (h,) = segment(h)
            if depth < last and not self.placed[depth]:
                continue
            logits, signal, answer = exit_program(h)
            prediction[running] = answer
            exit_depth[running] = depth + 1
            logits_out[running] = logits
            if depth == last:
                break
            score = self.sign * self.backend.stored(signal, self.codebook)
            keep = self.backend.nonzero(~(score >= self.thresholds[depth]))
            if len(keep) < len(running):
                running, h = running[keep], h[keep]
                if len(running) == 0:
                    break
        return {"prediction": prediction, "exit_depth": exit_depth, "logits": logits_out}


def load(folder: str | Path = ".", backend: str = "torch", exits: bool = True) -> ExportedSubnet:
    """The export in ``folder``, its programs run by torch or onnxruntime;
    ``exits=False`` runs the whole sub-network even where exits were exported."""
    return ExportedSubnet(folder, backend, exits)


def _read_images(args: argparse.Namespace, manifest: dict, backend: str):
    shape = [int(s) for s in manifest["input"]["shape"][1:]]
    if args.random:
        import torch

        images = torch.rand((args.random, *shape), generator=torch.Generator().manual_seed(0))
        return images.numpy() if backend == "onnx" else images
    if args.images is None:
        raise DriverError("give an images file (.npy or .pt) or --random N")
    if args.images.endswith(".pt"):
        import torch

        images = torch.load(args.images, weights_only=True)
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return images.numpy() if backend == "onnx" else images
    import numpy

    images = numpy.load(args.images, allow_pickle=False)
    images = images.astype(numpy.float32) / 255 if images.dtype == numpy.uint8 else images.astype(numpy.float32)
    if backend == "torch":
        import torch

        return torch.from_numpy(images)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with this exported sub-network and its exits.")
    parser.add_argument("images", nargs="?", help="float32 [N, C, H, W] in [0, 1] or uint8 in 0..255: .npy or .pt")
    parser.add_argument("--random", type=int, default=0, help="classify N random images instead")
    parser.add_argument("--onnx", action="store_true", help="run the .onnx programs with onnxruntime")
    parser.add_argument("--no-exits", action="store_true", help="run the whole sub-network, no early exits")
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parent), help="the export folder")
    parser.add_argument("--batch-size", type=int, default=256, help="images per call")
    args = parser.parse_args(argv)
    backend = "onnx" if args.onnx else "torch"
    try:
        subnet = load(args.folder, backend, exits=not args.no_exits)
        images = _read_images(args, subnet.manifest, backend)
        predictions, depths = [], []
        for begin in range(0, len(images), max(1, args.batch_size)):
            result = subnet.run(images[begin: begin + max(1, args.batch_size)])
            predictions += [int(p) for p in result["prediction"]]
            depths += [int(d) for d in result["exit_depth"]]
    except (DriverError, OSError, ValueError) as exc:
        print(f"driver: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"subnet": subnet.manifest["subnet"]["name"], "backend": backend, "prediction": predictions,
                      "class": [subnet.classes[p] if p >= 0 else None for p in predictions],
                      "exit_depth": depths}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
