"""The CUDA path of measuring (``anytime.profile``): calls timed with CUDA
events on the stream the model runs on, peak activation memory read from
the CUDA allocator, and a tiny catalog built on the GPU.  They run wherever
CUDA is present and are skipped elsewhere; the device-independent parts
(the table's name, the CPU tracker the GPU figure is compared with) are
checked everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anytime.profile import local_device_key, measured_peak_activation_bytes, time_calls, time_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


class Spread(nn.Module):
    """One activation of known size: the input repeated ``times`` over its
    channels, then summed (a few bytes).  Peak live activations: the input
    and the repeated tensor."""

    def __init__(self, times: int):
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.times, 1, 1).sum()


SHAPE = (1, 3, 32, 32)
TIMES = 512  # 3 x 512 x 32 x 32 float32: 6 MiB, far above the allocator's rounding (512 bytes)
EXPECTED_BYTES = 4 * int(np.prod(SHAPE)) * (1 + TIMES)


def test_local_device_key_names_the_kind_of_device():
    assert local_device_key("cpu") == "cpu-local"
    assert local_device_key("cuda") == local_device_key("cuda:1") == "cuda-local"


def test_cpu_tracker_sees_the_known_activation():
    """The CPU figure the GPU one is checked against below."""
    measured = measured_peak_activation_bytes(Spread(TIMES), SHAPE, "cpu")
    assert EXPECTED_BYTES <= measured <= EXPECTED_BYTES + 4096


@needs_cuda
def test_cuda_timing_uses_cuda_events(monkeypatch):
    """Every timed call lies between two CUDA events (none on the CPU clock),
    and a call with 64 times the work takes longer."""
    made = []
    event = torch.cuda.Event

    def counting_event(*args, **kwargs):
        made.append(kwargs.get("enable_timing"))
        return event(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", counting_event)
    small = nn.Linear(256, 256)
    times = time_calls(small, batch_size=8, device="cuda", warmup=3, repeats=20, input_shape=(256,))
    assert made == [True] * 40 and times.shape == (20,)
    assert np.isfinite(times).all() and (times > 0).all()
    monkeypatch.setattr(torch.cuda, "Event", event)
    big = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(8)])
    slow = time_model(big, batch_size=512, device="cuda", warmup=3, repeats=20, input_shape=(2048,))
    assert slow.p50_ms > np.median(times)
    assert slow.provenance.device_type == "cuda"
    assert slow.provenance.device == torch.cuda.get_device_name(0)


@needs_cuda
def test_cuda_peak_memory_is_the_known_activation():
    """The CUDA allocator's peak over one call, less what was allocated
    before it (weights, input), plus the input: what the CPU tracker counts."""
    measured = measured_peak_activation_bytes(Spread(TIMES), SHAPE, "cuda")
    cpu = measured_peak_activation_bytes(Spread(TIMES), SHAPE, "cpu")
    assert EXPECTED_BYTES <= measured <= EXPECTED_BYTES + 64 * 1024
    assert abs(measured - cpu) <= 64 * 1024


@needs_cuda
def test_tiny_catalog_built_on_cuda(cifar_batches_dir, tmp_path):
    """``build_catalog`` on the GPU: a measured table named cuda-local that
    names the GPU and was timed with CUDA, positive measured peak memory,
    predicted devices from the stored summaries, traces as on the CPU."""
    from anytime.builder import ProfileConfig, build_catalog
    from anytime.catalog import load_catalog
    from anytime.devices_file import predicted_table
    from anytime.evaluate import collect_traces
    from nets import create_net
    from nets.data import load_cifar10

    torch.manual_seed(0)
    model = create_net("dnnet_tiny")
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    data = load_cifar10(cifar_batches_dir, val_size=20)
    config = ProfileConfig(device="cuda", local_device_key=local_device_key("cuda"), large_batch=4, warmup=2,
                           repeats_batch1=5, repeats_large=5, repeats_segment=5)
    catalog, _ = build_catalog(model, "dnnet_tiny", weights, data, config, progress=False)
    table = catalog.latency["cuda-local"]
    assert catalog.measured_device == "cuda-local" and "cpu-local" not in catalog.latency
    assert table.provenance["device_type"] == "cuda"
    assert table.provenance["device"] == torch.cuda.get_device_name(0)
    assert np.isfinite(table.p50_ms).all() and (table.p50_ms > 0).all() and (table.p90_ms >= table.p50_ms).all()
    assert (table.segment_p50_ms > 0).all() and (table.head_p50_ms > 0).all()
    assert (catalog.costs["peak_activation_bytes_measured"] > 0).all()
    assert catalog.other_machine_note() is None  # a GPU's table is not compared with this CPU's name
    images, labels = data.split("test")
    expected = collect_traces(model.cpu(), images, labels)
    np.testing.assert_array_equal(catalog.traces["test"].prediction, expected.prediction)
    catalog.save(tmp_path / "tiny")
    loaded = load_catalog(tmp_path / "tiny")
    for name, stored in loaded.latency.items():
        if not stored.measured:
            again = predicted_table(_device(stored), loaded.roofline, stored.batch_sizes)
            np.testing.assert_allclose(again.p50_ms, stored.p50_ms, rtol=1e-9, err_msg=name)


def _device(table):
    from anytime.latency_model import DeviceModel

    return DeviceModel(**table.provenance["device_model"])
