"""Property tests over what a user types: budgets and tenant strings either
give a valid answer or one typed error, never anything else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytime.catalog import load_catalog
from anytime.cli import parse_tenant
from nets.errors import AnytimeError
from scheduler import Budget, BudgetError, InfeasibleBudget, UnknownDeviceError, select_subnet
from scheduler.allocation import SharedDevice, Tenant, allocate, allocation_fits
from scheduler.errors import TenantError

NUMBERS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12),
                    st.sampled_from([0, 1e-300, 1e300, -0.0, 20e6, 1.5e6, 4.0, 0.8]), st.booleans(), st.text(max_size=5))


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@settings(max_examples=150, deadline=None)
@given(macs=NUMBERS, latency_ms=NUMBERS, memory_bytes=NUMBERS, energy_mj=NUMBERS, min_accuracy=NUMBERS,
       share=NUMBERS, quantile=st.sampled_from([0.5, 0.9, 0.99, 0.7, float("nan"), 1, "p99"]),
       device=st.one_of(st.none(), st.sampled_from(["cpu-local", "no-such-device"]), st.integers()))
def test_budgets_give_a_fitting_choice_or_a_typed_error(catalog, macs, latency_ms, memory_bytes, energy_mj,
                                                        min_accuracy, share, quantile, device):
    fields = dict(macs=macs, latency_ms=latency_ms, memory_bytes=memory_bytes, energy_mj=energy_mj,
                  min_accuracy=min_accuracy, latency_quantile=quantile, device=device,
                  share=1.0 if share is None else share)
    try:
        budget = Budget(**fields)
    except BudgetError:
        return
    try:
        choice = select_subnet(budget, catalog)
    except (InfeasibleBudget, UnknownDeviceError, BudgetError):
        return
    costs = choice.costs()
    for name in ("macs", "latency_ms", "memory_bytes", "energy_mj"):
        limit = getattr(budget, name)
        if limit is not None:
            assert costs[name] <= limit * (1 + 1e-9), (name, costs[name], limit)
    if budget.min_accuracy is not None:
        assert choice.expected_accuracy >= budget.min_accuracy - 1e-12
    assert all(math.isfinite(v) and v >= 0 for v in costs.values())


TENANT_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda name, parts: ":".join([name, *parts]), st.text(max_size=8),
              st.lists(st.one_of(st.sampled_from(["30", "50", "0", "-1", "nan", "inf", "1e9", "1e-9", "", "x", "2"]),
                                 st.floats().map(repr)), max_size=5)))


@settings(max_examples=300, deadline=None)
@given(text=TENANT_TEXT)
def test_tenant_strings_parse_or_fail_typed(text):
    try:
        name, rate, deadline, weight = parse_tenant(text)
    except TenantError as exc:
        assert len(str(exc)) < 200 and "\n" not in str(exc)
        return
    assert name.strip() and text.startswith(name + ":")
    assert all(isinstance(v, float) for v in (rate, deadline, weight))


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(TENANT_TEXT, min_size=1, max_size=3),
       share=st.sampled_from([1.0, 0.5, 0.05]))
def test_parsed_tenants_allocate_or_fail_typed(catalog, texts, share):
    """What the command line does with tenants: a fitting allocation, or a
    typed error (input: 2; cannot be met: 3)."""
    try:
        parsed = [parse_tenant(t) for t in texts]
        tenants = [Tenant(name, catalog, rate_hz=rate, deadline_ms=deadline, weight=weight)
                   for name, rate, deadline, weight in parsed]
        device = SharedDevice("cpu-local", share=share)
        result = allocate(tenants, device, time_limit_s=2.0)
    except AnytimeError as exc:
        assert exc.exit_status in (2, 3)
        return
    picks = {name: choice.option.row for name, choice in result.choices.items()}
    assert allocation_fits(picks, tenants, device)
