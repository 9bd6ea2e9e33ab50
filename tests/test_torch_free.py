"""The scheduler and the simulator work where PyTorch is absent: selecting,
allocating, simulating a shipped scenario and drawing its report, in a
process where ``import torch`` fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
""")


def _run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    program = _BLOCK_TORCH + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})


def test_blocking_works(tmp_path):
    result = _run_without_torch("import torch", tmp_path)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_select_allocate_simulate_report_without_torch(tmp_path):
    result = _run_without_torch(f"""
        from scheduler import Budget, select_subnet
        from scheduler.allocation import SharedDevice, Tenant, allocate
        from anytime.catalog import load_catalog
        from anytime.cli import main

        choice = select_subnet(Budget(macs=20e6, memory_bytes=1.5e6))
        catalog = load_catalog()
        device = next(d for d, t in catalog.latency.items() if t.measured)
        tenants = [Tenant("camera", catalog, rate_hz=50, deadline_ms=40), Tenant("voice", catalog, rate_hz=20,
                   deadline_ms=30)]
        result = allocate(tenants, SharedDevice(device, share=0.8), time_limit_s=5)
        assert set(result.choices) == {{"camera", "voice"}}
        status = main(["simulate", "{REPO}/scenarios/phone.yaml", "--out", "res", "--duration-s", "10",
                       "--policies", "nested,superserve,zoo", "--quiet"])
        assert status == 0, status
        assert main(["report", "res"]) == 0
        assert main(["select", "--macs", "20e6", "--json"]) == 0
        assert main(["sweep", "{REPO}/scenarios/phone.yaml", "--policies", "nested,zoo", "--seeds", "2",
                     "--max-requests", "50", "--executor", "serial", "--out", "sweep", "--quiet"]) == 0
        import sys
        assert "torch" not in sys.modules
        print("SELECTED", choice.spec)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SELECTED d" in result.stdout
    assert (tmp_path / "res" / "figures").is_dir()
    assert (tmp_path / "sweep" / "runs.jsonl").read_text().count("\n") == 4  # 2 policies x 2 seeds
