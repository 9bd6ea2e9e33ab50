"""The ``anytime`` command: one subcommand per verb, each a thin call into the
packages' public functions (``simulate`` is ``simulator.run``).  It is the one
place that ties ``nets``, ``anytime``, ``scheduler`` and ``simulator``
together, so it imports each lazily, inside its subcommand; building the
parser imports only the light modules that own its choices and defaults
(``nets.train_config``, ``scheduler.budget``, ``scheduler.options``), never torch.

Every failure ends in one line on stderr: exit status 2 for usage and input
errors, 3 for a budget or allocation that cannot be met, 1 for I/O and
internal errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("anytime")

DISTRIBUTION = "dnnet-anytime"  # the installed distribution's name (pyproject.toml); its commands: anytime
DEFAULT_DATA = "../shared/data/cifar10-jpeg.zip"
# decoded images are cached in the user's cache directory (anytime.user_cache), never in the working folder
IMAGE_CACHE_SUBDIR = "images"
DEVICES_HELP = ("a devices file (YAML): your spec-sheet devices and measured latency tables (CSV), added to the "
                "catalog in memory; --device may name them")

# Exit statuses: what a script calling the tool can tell apart.  An
# AnytimeError carries its own (2 for bad input, 3 for a budget or an
# allocation that cannot be met).
EXIT_INTERNAL, EXIT_INPUT = 1, 2


def _cmd_train(args: argparse.Namespace) -> int:
    from nets.data import load_image_folder
    from nets.registry import net_builder
    from nets.errors import ConfigError
    from nets.train import TrainConfig, check_run_folder, train

    check_run_folder(args.out, args.name or args.net, args.resume)  # before the data and the model
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         threads=args.threads, lambda_scheme=args.lambda_scheme,
                         full_output_weight=args.full_output_weight, distill_weight=args.distill_weight,
                         exit_gradient_scale=args.exit_gradient_scale, teacher_net=args.teacher_net or "",
                         teacher_weights=args.teacher_weights or "",
                         norm_weight_decay=not args.no_norm_weight_decay, max_batches=args.max_batches,
                         precision=args.precision, compile=args.compile)
    net_config = json.loads(args.net_config) if args.net_config else {}
    if not isinstance(net_config, dict):
        raise ConfigError(f"--net-config must be a JSON object, got {args.net_config!r:.60}")
    net_builder(args.net)  # an unknown name is refused before the data is read
    data = load_image_folder(args.data, val_size=args.val_size, seed=args.seed, cache_dir=_image_cache(args))
    model = _net_for_data(args.net, data, net_config, args.seed)
    card = train(model, args.name or args.net, data, config, args.out, resume=args.resume,
                 progress=not args.quiet and _tty())
    if not card:  # another process of a torchrun group: rank 0 reports
        return 0
    print(json.dumps({"name": card["name"], "test_accuracy_full": card["test_accuracy_full"],
                      "wall_time_seconds": card["wall_time_seconds"], "out": str(args.out)}))
    return 0


def _net_for_data(net: str, data, net_config: dict, seed: int):
    """``net`` built for ``data``: its classes and, on a data set other than
    CIFAR-10, input normalisation by the data's own channel statistics
    (where the network's config has ``mean``/``std``, as this project's do;
    ``--net-config`` still wins).  Seeded: the initial weights are part of
    what the seed reproduces."""
    import torch

    from nets.data import CIFAR10_CLASSES, channel_statistics
    from nets.registry import create_net

    config = {"num_classes": len(data.classes), **net_config}
    torch.manual_seed(seed)
    model = create_net(net, **config)
    own_data = tuple(data.classes) != CIFAR10_CLASSES
    if own_data and "mean" not in net_config and hasattr(getattr(model, "config", None), "mean"):
        mean, std = channel_statistics(data.train_images)
        torch.manual_seed(seed)
        model = create_net(net, **{**config, "mean": mean, "std": std})
    return model


def _image_cache(args: argparse.Namespace) -> Path:
    """Where decoded images are cached: ``--cache-dir``, else the user cache."""
    from anytime.user_cache import cache_dir

    return Path(args.cache_dir) if args.cache_dir else cache_dir() / IMAGE_CACHE_SUBDIR


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from anytime.builder import ProfileConfig, build_catalog
    from anytime.profile import local_device_key
    from nets.errors import OutputError
    from nets.data import load_image_folder
    from nets.registry import create_trained_net, net_builder, weights_path

    _check_new_catalog(args.out)  # before minutes of profiling, not after
    if args.csv and Path(args.csv).exists():
        raise OutputError(f"{args.csv} exists; choose another name (nothing was changed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    net_builder(args.net)  # an unknown name is refused before the data is read
    weights = Path(args.weights) if args.weights else weights_path(args.net)
    data = load_image_folder(args.data, val_size=args.val_size, seed=args.seed, cache_dir=_image_cache(args))
    # built as the model card beside the weights records it (classes, widths), for this data
    model = create_trained_net(args.net, weights, data.classes, data.image_size)
    config = ProfileConfig(large_batch=args.large_batch, repeats_batch1=args.repeats, device=args.device,
                           local_device_key=local_device_key(args.device))  # a GPU's table: cuda-local
    catalog, fit = build_catalog(model, args.net, weights, data, config, progress=not args.quiet and _tty())
    json_path, npz_path = catalog.save(args.out)
    if args.csv:
        catalog.to_csv(args.csv)
    print(json.dumps({"catalog": str(json_path), "traces": str(npz_path),
                      "full_test_accuracy": float(catalog.accuracy("test")[-1, -1]),
                      "latency_model_median_error": round(fit["median_abs_rel_error"], 4),
                      "latency_model_p90_error": round(fit["p90_abs_rel_error"], 4)}))
    return 0


def _cmd_retime(args: argparse.Namespace) -> int:
    """Time every sub-network, segment and head of a catalog again on this
    machine; everything else (costs, traces, exits, predicted devices) is
    kept.  The new table names this machine (``provenance["device"]``)."""
    import time

    import torch

    from anytime.builder import ProfileConfig, retime_catalog
    from anytime.catalog import load_catalog
    from nets.errors import ConfigError

    _check_new_catalog(args.out)  # before minutes of timing
    if args.passes < 1 or args.repeats < args.passes:
        raise ConfigError(f"--passes must be >= 1 and --repeats >= --passes, got {args.passes} and {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    model = catalog.load_net(args.weights)
    device = catalog.measured_device
    before = catalog.latency_table(device)
    kind = "cuda" if before.provenance.get("device_type") == "cuda" else "cpu"  # re-timed on its own kind
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"the catalog's measured table {device!r} was timed on a GPU and this machine has no "
                          "CUDA device: retime it where one is, or profile the net here for a CPU table")
    config = ProfileConfig(local_device_key=device, large_batch=before.batch_sizes[-1], passes=args.passes,
                           device=kind,
                           repeats_batch1=args.repeats,
                           repeats_large=max(args.passes, args.repeats // 5), repeats_segment=args.repeats)
    started = time.perf_counter()
    retimed, fit = retime_catalog(catalog, model, config, progress=not args.quiet and _tty())
    seconds = time.perf_counter() - started
    json_path, _ = retimed.save(args.out)
    after = retimed.latency_table(device)
    full = (catalog.depths - 1, catalog.widths - 1)
    print(json.dumps({"catalog": str(json_path), "device": device, "seconds": round(seconds, 1),
                      "measured_on": {"before": before.provenance.get("device"),
                                      "after": after.provenance.get("device")},
                      "threads": after.provenance.get("threads"),
                      "full_subnet_p50_ms": {"before": round(float(before.p50_ms[0][full]), 3),
                                             "after": round(float(after.p50_ms[0][full]), 3)},
                      "latency_model_median_error": round(fit["median_abs_rel_error"], 4)}))
    return 0


def _check_new_catalog(stem: str | Path) -> None:
    """Refuse a catalog destination whose files exist or cannot be written."""
    import os

    from nets.errors import OutputError

    from anytime.catalog import catalog_stem

    stem = catalog_stem(stem)
    taken = [str(stem) + s for s in (".json", ".npz") if Path(str(stem) + s).exists()]
    if taken:
        raise OutputError(f"{taken[0]} exists; choose another catalog name (nothing was changed)")
    parent = stem.parent if str(stem.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {parent}: permission denied")


def _cmd_plot_catalog(args: argparse.Namespace) -> int:
    from anytime.catalog import load_catalog
    from anytime.outputs import ResultsFolder
    from anytime.plots import accuracy_table_markdown, plot_budget, plot_heatmaps

    catalog = load_catalog(args.catalog)
    if args.devices:
        from anytime.devices_file import add_user_devices

        catalog = add_user_devices(catalog, args.devices)
    with ResultsFolder(args.out, kind="plot-catalog", details={"catalog": catalog.net}) as staging:
        table = staging / "accuracy_grid.md"
        table.write_text(accuracy_table_markdown(catalog))
        written = [plot_heatmaps(catalog, staging / "catalog_heatmaps.png", device=args.device),
                   plot_budget(catalog, staging / "catalog_mac_budget.png", args.mac_budget), table]
        if args.csv:
            written.append(catalog.to_csv(staging / "catalog.csv"))
    print("\n".join(str(args.out / Path(p).name) for p in written))
    return 0


def _cmd_exits(args: argparse.Namespace) -> int:
    from anytime.calibrate import calibrate_policies, compare_at_equal_macs, policy_curves
    from anytime.catalog import load_catalog
    from anytime.outputs import ResultsFolder
    from anytime.plots import plot_exit_curves, width_ladder_curve
    from nets.errors import ConfigError
    from nets.spec import SubnetSpec

    if args.fit and args.recalibrate:
        raise ConfigError("--fit calibrates the exit settings itself: give --fit or --recalibrate, not both")
    writes = args.fit or args.recalibrate
    if writes:  # before anything is read: where the fitted catalog goes
        _refuse_installed_destination(args.out or args.catalog or _shipped_stem(), bool(args.out))
    catalog = load_catalog(args.catalog)
    if writes and args.out:
        _check_new_catalog(args.out)  # without --out the fitted catalog replaces its own input
    if args.fit:  # the scorers' weights go beside it: never over a file that is not the catalog's own
        from anytime.calibrate import check_scorers_destination

        check_scorers_destination(catalog, args.out or args.catalog or _shipped_stem())
    report_folder = ResultsFolder(args.report, kind="exits")
    report_folder.check()  # before the fitting, which takes minutes
    scorers = _fit_exits(args, catalog) if args.fit else None
    spec = SubnetSpec.parse(args.subnet) if args.subnet else SubnetSpec(catalog.depths, catalog.widths)
    if args.recalibrate:  # the exit settings again from the stored val traces: no data, no training
        from anytime.calibrate import calibrate_ladder

        calibrate_ladder(catalog, progress=not args.quiet and _tty(), calibration=args.calibration,
                         delta=args.delta)
    results = calibrate_policies(catalog, spec, tolerance=args.tolerance, calibration=args.calibration,
                                 delta=args.delta)
    curves = policy_curves(catalog, spec)
    report = {"policies": [r.to_dict() for r in results]}
    if "gate" in curves and "gate_ce" in curves:
        report["hinge_vs_cross_entropy"] = compare_at_equal_macs(curves, "gate", "gate_ce",
                                                                 full_macs=results[0].full_macs)
    refinement = None
    if spec.width > 1:
        from dataclasses import asdict

        from anytime.exits import calibrate_width_refinement

        refinement = calibrate_width_refinement(catalog, spec, args.tolerance)
        report["width_refinement"] = {**asdict(refinement), "macs_fraction": refinement.macs_fraction}
    with report_folder as staging:
        plot_exit_curves(curves, results, staging / f"exits_{spec}.png",
                         f"{catalog.net} {spec}: early exits, calibrated on val, reported on test", ladder=refinement,
                         ladder_curve=None if refinement is None else width_ladder_curve(catalog, refinement))
        (staging / f"exits_{spec}.json").write_text(json.dumps(report, indent=1))
    if scorers is not None:  # after the report: the cross-entropy gates serve only the comparison above
        from anytime.calibrate import save_fitted

        save_fitted(catalog, scorers, args.out or args.catalog or _shipped_stem(), exclude_policies=tuple(args.exclude))
    elif args.recalibrate:
        catalog.save(args.out or args.catalog or _shipped_stem())
    print(f"{'policy':10s} {'val acc':>8s} {'test acc':>9s} {'exp. MACs (M)':>14s} {'of full':>8s}")
    for r in results:
        print(f"{r.policy:10s} {100 * r.val_accuracy:8.2f} {100 * r.test_accuracy:9.2f} "
              f"{r.test_expected_macs / 1e6:14.2f} {100 * r.macs_fraction:7.1f}%")
    if refinement is not None:
        print(f"{'widths':10s} {100 * refinement.val_accuracy:8.2f} {100 * refinement.test_accuracy:9.2f} "
              f"{refinement.test_expected_macs / 1e6:14.2f} {100 * refinement.macs_fraction:7.1f}%   (width refinement "
              f"{refinement.name}: widen while the margin < {refinement.margin_threshold:.3f})")
    print(f"full {spec}: test accuracy {100 * results[0].full_test_accuracy:.2f}%, {results[0].full_macs / 1e6:.2f} M MACs")
    if "hinge_vs_cross_entropy" in report:
        print("decision gates at equal expected MACs (test accuracy %): hinge vs cross-entropy")
        for row in report["hinge_vs_cross_entropy"]:
            print(f"  {100 * row['macs_fraction']:3.0f}% of full MACs: hinge {100 * row['gate']:6.2f}  "
                  f"cross-entropy {100 * row['gate_ce']:6.2f}  difference {100 * row['difference']:+.2f}")
    return 0


def _fit_exits(args: argparse.Namespace, catalog):
    """``exits --fit``: train the gates and support networks on the data and
    calibrate the scheduler's exit settings, into ``catalog``; returns the
    fitted scorers (``anytime.gates.Scorers``), whose weights ship with it."""
    import torch

    from anytime.builder import check_catalog_data
    from anytime.calibrate import calibrate_ladder, fit_scorers
    from nets.data import load_image_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    model = catalog.load_net(args.weights)  # refuses weights that are not the catalog's
    data = load_image_folder(args.data, val_size=len(catalog.traces["val"]), seed=args.seed,
                             cache_dir=_image_cache(args))
    check_catalog_data(model, data, catalog)  # the classes, image size and val split the catalog was built on
    progress = not args.quiet and _tty()
    scorers = fit_scorers(model, data, catalog, train_subset=args.train_subset, progress=progress, seed=args.seed)
    calibrate_ladder(catalog, progress=progress, calibration=args.calibration, delta=args.delta)
    return scorers


def _refuse_installed_destination(stem: str | Path, given: bool) -> None:
    """Refuse to write a catalog into the installed package (a wheel's
    package folders: read-only data, shared by every user of the install);
    a source checkout's ``anytime/data`` is the maintainers' to update."""
    from anytime.catalog import catalog_stem
    from nets.errors import OutputError

    stem = catalog_stem(stem)
    try:
        folder = stem.parent.resolve()
    except (OSError, RuntimeError, ValueError):
        return  # not a usable path: writing it fails later with its own message
    for package in _installed_package_folders():
        if folder.is_relative_to(package):  # the advice first: a long path is cut from the end of the line
            what = ("--out names a catalog" if given else
                    "--fit without --out writes the fitted catalog over its input, which is")
            raise OutputError(f"{what} inside the installed package; give --out STEM, a new catalog outside it "
                              f"(nothing was changed; package: {package})")


def _installed_package_folders() -> list[Path]:
    """The folders of this distribution's packages when installed (not a
    source checkout, whose folder holds pyproject.toml beside them)."""
    from importlib import resources

    folders = [Path(str(resources.files(name))).resolve() for name in ("nets", "anytime", "scheduler", "simulator")]
    return [folder for folder in folders if not (folder.parent / "pyproject.toml").is_file()]


def _shipped_stem():
    from anytime.catalog import SHIPPED_STEM

    return SHIPPED_STEM


def _cmd_select(args: argparse.Namespace) -> int:
    from scheduler import Budget, select_subnet

    catalog = _family_catalog(args.catalog, args.family, args.devices)
    budget = Budget(macs=args.macs, latency_ms=args.latency_ms, latency_quantile=args.quantile,
                    memory_bytes=args.memory_bytes, energy_mj=args.energy_mj, min_accuracy=args.min_accuracy,
                    device=args.device, share=args.share)
    selection = select_subnet(budget, catalog, args.family)
    if args.json:
        print(json.dumps({"subnet": str(selection.spec), "model": selection.model_name, "policy": selection.policy,
                          "thresholds": selection.thresholds, **selection.costs(),
                          "expected_accuracy": selection.expected_accuracy, "binding": selection.binding,
                          "latency_note": selection.latency_note}))
    else:
        print(selection.explain())
    return 0


def _family_catalog(stem: str | None, family: str, devices: str | None = None):
    """The catalog to choose from: ``stem`` or the shipped one, with the
    devices of a user's devices file and its shipped zoo for the ``zoo`` family."""
    from anytime.catalog import load_catalog

    catalog = load_catalog(stem) if stem else None
    if devices:
        from anytime.catalog import shipped_catalog
        from anytime.devices_file import add_user_devices

        catalog = add_user_devices(catalog or shipped_catalog(), devices)
    if family == "zoo" and not (catalog is not None and catalog.is_model_set):  # a model set is its own zoo
        from anytime.zoo import shipped_zoo_catalog

        catalog = shipped_zoo_catalog(catalog or load_catalog())
    return catalog


def parse_tenant(text: str) -> tuple[str, float, float, float]:
    """``NAME:RATE_HZ:DEADLINE_MS[:WEIGHT]`` -> (name, rate, deadline, weight);
    the numbers' ranges are the scheduler's to check (``Tenant``)."""
    from scheduler.errors import TenantError

    shown = repr(text)  # escapes can make the repr several times longer than the text: cut the repr
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0].strip():
        raise TenantError(f"--tenant {shown}: expected NAME:RATE_HZ:DEADLINE_MS[:WEIGHT], e.g. camera:30:50")
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError:
        raise TenantError(f"--tenant {shown}: rate, deadline and weight must be numbers") from None
    return parts[0], numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1.0


def _cmd_allocate(args: argparse.Namespace) -> int:
    from scheduler.allocation import SharedDevice, Tenant, allocate

    catalog = _family_catalog(args.catalog, args.family, args.devices)
    if catalog is None:
        from anytime.catalog import load_catalog

        catalog = load_catalog()
    from scheduler.options import option_table

    option_table(catalog)  # built once per catalog; not part of the solve time reported
    device_name = args.device or catalog.measured_device
    tenants = [Tenant(name, catalog, rate_hz=rate, deadline_ms=deadline, weight=weight, family=args.family,
                      latency_quantile=args.quantile)
               for name, rate, deadline, weight in (parse_tenant(t) for t in args.tenant)]
    result = allocate(tenants, SharedDevice(device_name, share=args.share, memory_bytes=args.memory_bytes),
                      time_limit_s=args.time_limit_s)
    if args.json:
        print(json.dumps({"objective": result.objective, "optimal": result.optimal, "gap": result.gap,
                          "utilisation": result.utilisation, "solve_seconds": result.solve_seconds,
                          "choices": {name: {"subnet": str(c.option.spec),
                                             "model": catalog.subnet_name(c.option.spec), "policy": c.option.policy,
                                             "thresholds": c.option.thresholds,
                                             "accuracy": c.option.expected_accuracy,
                                             "expected_ms": c.option.expected_ms, "response_ms": c.response_ms,
                                             "memory_bytes": c.option.memory_bytes}
                                      for name, c in result.choices.items()}}))
        return 0
    print(f"{len(tenants)} tenants on {device_name} (share {args.share:g}"
          + ("" if args.memory_bytes is None else f", {args.memory_bytes / 1e6:.2f} MB") + f"), family {args.family}")
    print("| tenant | sub-network | exits | accuracy | expected ms | predicted response ms | deadline ms |")
    print("|---|---|---|---:|---:|---:|---:|")
    for tenant in tenants:
        c = result.choices[tenant.name]
        print(f"| {c.tenant} | {catalog.subnet_name(c.option.spec)} | {c.option.policy} | {100 * c.option.expected_accuracy:.2f}% | "
              f"{c.option.expected_ms:.3f} | "
              f"{c.response_ms:.3f} | {tenant.deadline_ms:g} |")
    print(f"weighted accuracy {result.objective:.4f}, device load {100 * result.utilisation:.1f}% of the share, "
          f"{'proven optimal' if result.optimal else f'best found, within {100 * result.gap:.3g}% of the optimum (proven)'} in "
          f"{1000 * result.solve_seconds:.0f} ms ({result.options_after_pruning} options after pruning, "
          f"{result.options_solved} left to CP-SAT)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulator.scenario import load_scenario, parse_policies
    from simulator.shipped import scenario_path

    scenario = load_scenario(scenario_path(args.scenario))  # a bad scenario is refused before the heavy imports
    policies = parse_policies(args.policies.split(","), "--policies") if args.policies else None
    from simulator.api import prepare_scenario, results_folder, run
    from simulator.report import load_results, results_table

    scenario, catalog = prepare_scenario(scenario, policies, catalog=args.catalog, duration_s=args.duration_s,
                                         seed=args.seed, devices=args.devices)  # a policy that cannot run fails now
    # the destination is checked, locked and proven writable before the long work
    with results_folder(args.out, scenario) as staging:
        results = run(scenario, catalog=catalog, progress=None if args.quiet or not _tty() else _progress_bar)
        results.write_into(staging, report=not args.no_report)
    if args.json:  # what summary.json holds, on stdout
        print(json.dumps({"scenario": scenario.name, "out": str(args.out), "policies": results.summary()}))
        return 0
    print(results_table(load_results(args.out)[0]))
    print(f"results in {args.out}/ (summary.json, results.csv{'' if args.no_report else ', figures/, report.html'})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Play a scenario for real (``simulator.playback.play``): the runtime serves its requests on one CPU
    while a load generator plays its background and memory events; the results folder ``simulate`` writes."""
    from simulator.scenario import load_scenario, parse_policies
    from simulator.shipped import scenario_path

    scenario = load_scenario(scenario_path(args.scenario))  # a bad scenario is refused before the heavy imports
    policy = parse_policies([args.policy], "--policy")[0] if args.policy else scenario.policies[0]
    scenario = scenario.with_overrides(policies=(policy,),
                                       **({"duration_s": args.duration_s} if args.duration_s else {}))
    from simulator.playback import check_playable

    check_playable(scenario, policy)  # before the data and the model are loaded
    from anytime.catalog import load_catalog
    from nets.data import load_image_folder
    from simulator.api import results_folder
    from simulator.engine import scenario_catalog
    from simulator.playback import play
    from simulator.records import write_records
    from simulator.report import draw_report, load_results, results_table, write_results

    catalog = load_catalog(args.catalog) if args.catalog else scenario_catalog(scenario)
    data = load_image_folder(args.data, cache_dir=_image_cache(args))
    images, labels = data.split("test")
    with results_folder(args.out, scenario) as staging:
        shown = None if args.quiet or not _tty() else (
            lambda s: print(f"\rplayed {s:.0f} of {scenario.duration_s:g} s", end="", file=sys.stderr))
        result, records, stats = play(scenario, policy, catalog=catalog, images=images, labels=labels, cpu=args.cpu,
                                      progress=shown)
        write_results([result], scenario, staging)
        write_records(staging / "records.jsonl", records)
        (staging / "playback.json").write_text(json.dumps(stats.summary(), indent=1))
        if not args.no_report:
            draw_report(staging)
    print(results_table(load_results(args.out)[0]))
    print(f"results in {args.out}/ (summary.json, results.csv, records.jsonl, playback.json"
          f"{'' if args.no_report else ', figures/, report.html'})")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Scenarios x policies x seeds (x a grid) in parallel, resumable; means and paired comparisons with intervals."""
    from simulator.scenario import parse_policies
    from simulator.sweep import plan_sweep, run_sweep

    policies = parse_policies(args.policies.split(","), "--policies") if args.policies else None
    seeds = range(args.seeds) if args.seed_list is None else _seed_list(args.seed_list)
    plan = plan_sweep(args.scenarios, policies, seeds, args.grid, args.max_requests)  # refused before any run
    with _CountBar("runs", "run", args.quiet) as progress:
        results = run_sweep(plan, args.out, executor=args.executor, workers=args.workers, address=args.address,
                            progress=progress, report=not args.no_report)
    if args.json:
        print(json.dumps({"out": str(args.out), "ran": results.ran, "reused": results.reused,
                          "configs": results.statistics}))
        return 0
    print(results.table())
    found = sum(c.excludes_zero for c in results.comparisons)
    print(f"{len(results.records)} runs ({results.ran} run now on {results.executor}, {results.reused} already in "
          f"{args.out}) in {results.wall_s:.1f} s; {found} of {len(results.comparisons)} paired differences "
          f"exclude zero (comparisons.csv)")
    print(f"results in {args.out}/ (runs.jsonl, summary.json, summary.csv, comparisons.csv"
          f"{'' if args.no_report else ', figures/'})")
    return 0


def _cmd_fleet(args: argparse.Namespace) -> int:
    """A fleet: many independent copies of small scenarios, sharded across workers and merged exactly."""
    from simulator.fleet import load_fleet, run_fleet, write_fleet
    from simulator.scenario import parse_policies

    fleet = load_fleet(args.fleet)  # a bad fleet (or group scenario) is refused before any work
    policies = parse_policies(args.policies.split(","), "--policies") if args.policies else None
    fleet = fleet.with_overrides(policies=policies, duration_s=args.duration_s)
    from anytime.outputs import ResultsFolder

    # the destination is checked, locked and proven writable before the long work
    with ResultsFolder(args.out, kind="fleet", details={"fleet": fleet.name}) as staging:
        with _CountBar("copies", "copy", args.quiet) as progress:
            results = run_fleet(fleet, executor=args.executor, workers=args.workers, address=args.address,
                                chunk_copies=args.chunk_copies, progress=progress)
        write_fleet(results, staging)
    if args.json:
        print(json.dumps({"out": str(args.out), **results.run_info(), "policies": results.summary["policies"]}))
        return 0
    info = results.run_info()
    print(f"fleet {fleet.name}: {fleet.copies:,} copies, {results.devices:,} devices, {results.requests:,} simulated "
          f"requests ({len(fleet.policies)} policies x {results.requests // max(1, len(fleet.policies)):,}) in "
          f"{results.wall_s:.1f} s on {len(results.workers)} {results.executor} worker(s)")
    print("| worker | copies | requests | simulating s (CPU s) | requests/s (per CPU s) | peak memory MB (after its "
          "first chunk) |")
    print("|---|---:|---:|---:|---:|---:|")
    for worker in info["workers"]:
        print(f"| {worker['worker']} | {worker['copies']:,} | {worker['requests']:,} | {worker['busy_s']:.1f} "
              f"({worker['cpu_s']:.1f}) | {worker['requests_per_s'] or 0:,} ({worker['requests_per_cpu_s'] or 0:,}) | "
              f"{worker['peak_rss_mb']:.0f} ({worker['first_rss_mb']:.0f}) |")
    print(results.table())
    print(f"results in {args.out}/ (summary.json, results.csv, fleet.json)")
    return 0


class _CountBar:
    """A progress callback ``(done, total)`` over counted work (a sweep's
    runs, a fleet's copies): a tqdm bar opened at the first count, only on a
    terminal and without ``--quiet``, closed when the block ends."""

    def __init__(self, desc: str, unit: str, quiet: bool):
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.bar = None

    def __enter__(self) -> "_CountBar":
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and total and not self.quiet and _tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, leave=False)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _seed_list(text: str) -> list[int]:
    from nets.errors import ConfigError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seed-list: expected comma-separated whole numbers, got {text[:80]!r}") from None


def _progress_bar(policy: str, total_s: float):
    """A terminal progress bar over one policy's simulated seconds (``simulator.run``'s progress)."""
    from tqdm import tqdm

    return tqdm(total=total_s, desc=policy, unit="sim s", leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}]")


def _cmd_scenarios(args: argparse.Namespace) -> int:
    """List the shipped scenarios, copy one for editing, or print the format's JSON Schema."""
    from simulator.scenario import json_schema, load_scenario
    from simulator.shipped import copy_scenario, describe, shipped_scenarios

    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.action == "copy":
        written = copy_scenario(args.name, args.folder)
        print("\n".join(str(p) for p in written))
        print(f"edit {written[0]}, then: anytime simulate {written[0]} --out DIR", file=sys.stderr)
        return 0
    rows = [(name, describe(load_scenario(path)), path) for name, path in shipped_scenarios().items()]
    if args.json:
        print(json.dumps([{"name": name, "description": about, "path": str(path)} for name, about, path in rows],
                         indent=1))
    else:
        width = max((len(name) for name, _, _ in rows), default=0)
        print("\n".join(f"{name:{width}s}  {about}" for name, about, _ in rows))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import shutil

    from anytime.outputs import ResultsFolder, read_manifest
    from nets.errors import OutputError
    from simulator.report import draw_report, load_results, results_table

    results = Path(args.results)
    manifest = read_manifest(results) if results.is_dir() else None
    if manifest is None or manifest.get("kind") != "simulate":
        raise OutputError(f"{args.results} is not a results folder written by 'anytime simulate'")
    with ResultsFolder(results, kind="simulate", details={k: v for k, v in manifest.items()
                                                           if k not in ("tool", "kind", "status", "files",
                                                                        "created")}) as staging:
        for name in manifest["files"]:
            if not name.startswith("figures/"):  # the pictures are what is redrawn
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(results / name, staging / name)
        paths = draw_report(staging)
    print(results_table(load_results(results)[0]))
    print("\n".join(str(results / p.relative_to(staging)) for p in paths))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """A deployable artifact of one sub-network, with its exits (``anytime.export``)."""
    from anytime.catalog import load_catalog
    from anytime.export import export_subnet

    catalog = load_catalog(args.catalog)
    model = catalog.load_net(args.weights) if args.weights else None
    result = export_subnet(catalog, args.subnet, args.out, args.policy, accuracy_drop=args.accuracy_drop,
                           onnx=False if args.no_onnx else None, model=model)
    exits = result.manifest["exits"]
    print(json.dumps({"out": str(args.out), "subnet": result.manifest["subnet"]["name"], "policy": args.policy,
                      "accuracy_drop": exits and exits["accuracy_drop"],
                      "onnx": result.manifest["programs"]["subnet"]["onnx"] is not None,
                      "files": len(result.files), "seconds": round(result.seconds, 1),
                      "run": f"python {Path(args.out) / 'driver.py'} --random 4"}))
    return 0


def _cmd_nets(args: argparse.Namespace) -> int:
    from nets.registry import list_nets

    print("\n".join(list_nets()))
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the subcommands that run the network on data."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and scorer training")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: images/ in the user cache: "
                   "$ANYTIME_CACHE_DIR, else $XDG_CACHE_HOME/anytime, else ~/.cache/anytime)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it states it already,
    it has none (None) or it is a flag (off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "(default" in text or unset or not action.option_strings:  # 0 is a default to show, False a flag's
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (status 2), like every other
    error, and every option's default in its help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(EXIT_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only
    when asked (reading package metadata costs every command 50-100 ms)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the installed version and exit"):  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {installed_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="anytime", description="Anytime inference with doubly nested networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_models_commands(sub)
    _add_catalog_commands(sub)
    _add_export_command(sub)
    _add_scheduler_commands(sub)
    _add_simulator_commands(sub)
    return parser


def _add_models_commands(sub) -> None:
    """nets, train, profile: the commands that build and measure networks."""
    from nets.train_config import LAMBDA_SCHEMES, PRECISIONS, TrainConfig

    p = sub.add_parser("nets", help="list the registered networks")
    p.set_defaults(func=_cmd_nets)

    p = sub.add_parser("train", help="train a registered network on an image data set (resumable)")
    p.add_argument("net", help="registered network name (see 'anytime nets')")
    p.add_argument("--data", default=DEFAULT_DATA, help="image folders train/<class>/*, test/<class>/* (a folder "
                   "or a zip; any classes, one image size) or CIFAR-10's python batches (or their tar.gz)")
    p.add_argument("--out", type=Path, required=True, help="output folder (weights, model card, checkpoint, log)")
    p.add_argument("--name", help="name of the written weights (default: the net name)")
    p.add_argument("--net-config", help="JSON object of configuration overrides, e.g. '{\"width_groups\": 4}' "
                   "(default: none)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs (the one-cycle schedule's length)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    p.add_argument("--seed", type=int, default=TrainConfig.seed,
                   help="seed of the initial weights, the validation split and the batches")
    p.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads (0: torch's default)")
    p.add_argument("--lambda-scheme", choices=LAMBDA_SCHEMES, default=TrainConfig.lambda_scheme,
                   help="the joint loss's lambda(depth, width): uniform, or growing with depth")
    p.add_argument("--full-output-weight", type=float, default=TrainConfig.full_output_weight,
                   help="share of the loss on the full output alone (0: the paper's loss)")
    p.add_argument("--distill-weight", type=float, default=TrainConfig.distill_weight,
                   help="per output, share of distillation from the full output (vs labels)")
    p.add_argument("--teacher-net", help="distil from this separately trained registered net (with "
                   "--teacher-weights) (default: none: a nested net distils from its own full output)")
    p.add_argument("--teacher-weights", help="the teacher's weights, its model card beside them "
                   "(default: none; needed with --teacher-net)")
    p.add_argument("--no-norm-weight-decay", action="store_true",
                   help="no weight decay on batch-norm scales and shifts and on biases (conv and linear "
                        "weights are still decayed)")
    p.add_argument("--exit-gradient-scale", type=float, default=TrainConfig.exit_gradient_scale,
                   help="share of the gradient of the heads before the last depth that reaches the trunk "
                        "(1: joint training; 0: the heads learn on features trained for the last depth)")
    p.add_argument("--val-size", type=int, default=None, help="training images held out for validation "
                   "(default: a tenth of them, 5000 for CIFAR-10)")
    p.add_argument("--max-batches", type=int, default=TrainConfig.max_batches,
                   help="batches per epoch (0: all); for smoke runs")
    p.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                   help="auto: bfloat16 autocast where the CPU has native bfloat16 (AMX, AVX-512 BF16), "
                        "else float32 (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (needs a C++ compiler; 1.08x per step for the nested net in "
                        "bfloat16, after 85 s of compiling the first time; a resumed run may add or drop it)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: images/ in the user cache: "
                   "$ANYTIME_CACHE_DIR, else $XDG_CACHE_HOME/anytime, else ~/.cache/anytime)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("profile", help="build the catalog of a nested net: costs, latency, accuracy, traces")
    p.add_argument("net", help="registered nested network name")
    p.add_argument("--weights", help="state_dict to profile (default: the shipped weights of NET)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the data set the weights were trained on (as for "
                   "train), for accuracy and traces")
    p.add_argument("--out", required=True, help="catalog stem: writes STEM.json and STEM.npz")
    p.add_argument("--csv", help="also export the cost/accuracy table to this CSV file (default: none)")
    p.add_argument("--device", default="cpu", help="torch device to measure on (cpu, cuda, cuda:1)")
    p.add_argument("--large-batch", type=int, default=32, help="the larger batch size timed beside batch 1")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per sub-network at batch 1")
    _add_run_options(p)
    p.add_argument("--val-size", type=int, default=None, help="training images held out for validation "
                   "(default: a tenth of them, 5000 for CIFAR-10)")
    p.set_defaults(func=_cmd_profile)


def _add_catalog_commands(sub) -> None:
    """plot-catalog, exits: the commands that read a catalog."""
    from anytime.risk_control import CALIBRATIONS, DEFAULT_DELTA

    p = sub.add_parser("plot-catalog", help="heat maps and the MAC-budget picture of a catalog")
    p.add_argument("catalog", nargs="?", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--out", type=Path, default=Path("reports/catalog"),
                   help="results folder for the pictures: new, empty or an earlier one of this tool's "
                        "(default: %(default)s)")
    p.add_argument("--mac-budget", type=float, default=24e6, help="MAC budget of the feasibility picture")
    p.add_argument("--device", help="latency device shown (default: the measured one)")
    p.add_argument("--devices", help=DEVICES_HELP + " (default: none)")
    p.add_argument("--csv", action="store_true", help="also write catalog.csv")
    p.set_defaults(func=_cmd_plot_catalog)

    p = sub.add_parser("retime", help="measure a catalog's latency table on this machine (a new catalog)")
    p.add_argument("catalog", nargs="?", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--out", required=True, help="the new catalog's stem; its files must not exist")
    p.add_argument("--weights", help="state_dict of the catalog's net (default: the weights it records)")
    p.add_argument("--threads", type=int, default=0, help="torch threads while timing (0: torch's default)")
    p.add_argument("--passes", type=int, default=5, help="round-robin passes over every sub-network; a "
                   "sub-network's p50 is its lowest per-pass median, which leaves out the machine's slow spells")
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls per sub-network over all passes")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_retime)

    p = sub.add_parser("exits", help="fit exit scorers, calibrate every exit policy, report and plot")
    p.add_argument("catalog", nargs="?", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--fit", action="store_true", help="train gates and support networks, calibrate the "
                   "scheduler's exit settings and save them into the catalog, the scorers' weights beside it "
                   "(<stem>.scorers.pt; needs the data)")
    p.add_argument("--weights", help="state_dict of the catalog's net (default: its shipped weights)")
    p.add_argument("--out", help="write the fitted catalog here, a new stem (default: over the input catalog; "
                                 "required when that is inside the installed package)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the catalog's data set (as for train), for --fit")
    p.add_argument("--train-subset", type=int, default=10000, help="training images the scorers learn from")
    p.add_argument("--exclude", nargs="*", default=["gate_ce"],
                   help="learned scores left out of the saved catalog (default: gate_ce, report-only)")
    p.add_argument("--subnet", help="sub-network of the report, e.g. d16w8 (default: the full one)")
    p.add_argument("--tolerance", type=float, default=0.003, help="accuracy drop allowed on val when calibrating")
    p.add_argument("--recalibrate", action="store_true", help="calibrate the scheduler's exit settings again "
                   "from the catalog's stored val traces (no data needed) and save the catalog (as --fit does)")
    p.add_argument("--calibration", choices=tuple(CALIBRATIONS), default="learn_then_test",
                   help="how thresholds are chosen: " + "; ".join(f"{k}: {v}" for k, v in CALIBRATIONS.items()))
    p.add_argument("--delta", type=float, default=DEFAULT_DELTA,
                   help="learn_then_test: the probability that the drop exceeds its tolerance")
    p.add_argument("--report", type=Path, default=Path("reports/exits"),
                   help="results folder for the picture and table: new, empty or an earlier one of this "
                        "tool's (default: %(default)s)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_exits)


def _add_export_command(sub) -> None:
    """export: a sub-network and its exits as programs a small driver runs."""
    p = sub.add_parser("export", help="write a sub-network (and its exits) as torch.export programs, ONNX where "
                                      "installed, with a manifest and a standalone driver")
    p.add_argument("subnet", help="the sub-network, e.g. d12w6")
    p.add_argument("--policy", help="exit policy (max_prob, entropy, margin, gate, gate_ce, support): one program "
                                     "per depth segment and per exit, with the catalog's calibrated thresholds "
                                     "(default: none, the whole sub-network only)")
    p.add_argument("--accuracy-drop", type=float,
                   help="which calibrated setting of the policy: its tolerated drop of validation accuracy, "
                        "e.g. 0.01 (default: the catalog's smallest)")
    p.add_argument("--catalog", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--weights", help="state_dict of the catalog's net (default: the weights it records)")
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder; an export never replaces files")
    p.add_argument("--no-onnx", action="store_true", help="no ONNX programs even where the exporter is installed")
    p.set_defaults(func=_cmd_export)


def _add_scheduler_commands(sub) -> None:
    """select, allocate: the scheduler's decisions."""
    from scheduler.budget import QUANTILES, Budget
    from scheduler.options import FAMILIES

    p = sub.add_parser("select", help="select_subnet: the best sub-network and exits under budgets")
    p.add_argument("--catalog", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--macs", type=float, help="expected MACs per inference (default: no limit)")
    p.add_argument("--latency-ms", type=float, help="deadline per inference (default: none)")
    p.add_argument("--quantile", type=float, default=Budget.latency_quantile, choices=QUANTILES,
                   help="deadline quantile")
    p.add_argument("--memory-bytes", type=float, help="weights and activations (default: no limit)")
    p.add_argument("--energy-mj", type=float, help="energy per inference, millijoules (default: no limit)")
    p.add_argument("--min-accuracy", type=float, help="fraction, e.g. 0.85 (default: none)")
    p.add_argument("--device", help="latency table of the catalog (default: the measured device)")
    p.add_argument("--devices", help=DEVICES_HELP + " (default: none)")
    p.add_argument("--share", type=float, default=Budget.share, help="fraction of the device available, (0, 1]")
    p.add_argument("--family", default="nested", choices=tuple(FAMILIES),
                   help="options to choose from (zoo: the separately trained widths shipped beside the catalog)")
    p.add_argument("--json", action="store_true", help="the choice as one JSON object")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("allocate", help="share one device among several applications (proven optimal, or the best "
                                        "found with its proven gap)")
    p.add_argument("--tenant", action="append", required=True, metavar="NAME:RATE_HZ:DEADLINE_MS[:WEIGHT]",
                   help="an application: requests per second, deadline per request (queueing included), "
                        "weight in the objective; repeat for each")
    p.add_argument("--catalog", help="catalog stem or file (default: the shipped catalog)")
    p.add_argument("--device", help="latency table of the catalog (default: the measured device)")
    p.add_argument("--devices", help=DEVICES_HELP + " (default: none)")
    p.add_argument("--share", type=float, default=Budget.share,
                   help="fraction of the device left for these apps, (0, 1]")
    p.add_argument("--memory-bytes", type=float, help="memory for all the apps' models (default: no limit)")
    p.add_argument("--quantile", type=float, default=Budget.latency_quantile, choices=QUANTILES,
                   help="the job size whose predicted response must meet the deadline")
    p.add_argument("--family", default="nested", choices=tuple(FAMILIES), help="options to choose from")
    p.add_argument("--time-limit-s", type=float, default=5.0,
                   help="limit of the whole allocation (> 0); past it, the best found and its proven gap "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="the allocation as one JSON object")
    p.set_defaults(func=_cmd_allocate)


def _add_simulator_commands(sub) -> None:
    """simulate, sweep, scenarios, report: scenarios and their results."""
    p = sub.add_parser("simulate", help="run a scenario under each of its policies and write results and pictures")
    p.add_argument("scenario", help="a shipped scenario's name (see 'anytime scenarios') or a scenario YAML file")
    p.add_argument("--out", required=True,
                   help="results folder: new, empty or an earlier one of this tool's, replaced only when the "
                        "run succeeds; a folder holding anything else is refused")
    p.add_argument("--policies", help="comma-separated policies instead of the scenario's, e.g. nested,superserve "
                                      "(default: the scenario's)")
    p.add_argument("--duration-s", type=float, help="simulated seconds (default: the scenario's)")
    p.add_argument("--seed", type=int, help="seed of arrivals and samples (default: the scenario's)")
    p.add_argument("--catalog", help="catalog stem or file (default: the scenario's, else the shipped one)")
    p.add_argument("--devices", help=DEVICES_HELP + " (default: the scenario's devices_file)")
    p.add_argument("--no-report", action="store_true", help="write results only, no pictures or report.html")
    p.add_argument("--json", action="store_true", help="print the per-policy summary as JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("serve", help="play a scenario for real: the runtime serves its requests on one CPU while a "
                                     "load generator plays its load; writes what 'simulate' writes, and the records")
    p.add_argument("scenario", help="a shipped scenario's name or a scenario YAML file (one fcfs device, no links)")
    p.add_argument("--out", required=True,
                   help="results folder: new, empty or an earlier one of this tool's, replaced only when the "
                        "run succeeds; a folder holding anything else is refused")
    p.add_argument("--policy", help="the policy served (default: the scenario's first)")
    p.add_argument("--catalog", help="catalog stem or file, e.g. one retimed on this machine (default: the "
                                     "scenario's, else the shipped one)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the data set whose test split the catalog's traces are "
                                                         "of (zip or folder)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: images/ in the user cache)")
    p.add_argument("--cpu", type=int, help="the CPU served on (default: the last this process may use)")
    p.add_argument("--duration-s", type=float, help="played seconds (default: the scenario's)")
    p.add_argument("--no-report", action="store_true", help="write results only, no pictures or report.html")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_serve)

    from simulator.sweep import EXECUTORS

    p = sub.add_parser("sweep", help="run scenarios x policies x seeds (x a grid of overrides) in parallel, resumably; "
                                     "means and paired differences with 95%% intervals")
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="shipped scenarios' names or scenario YAML files")
    p.add_argument("--out", required=True,
                   help="sweep folder: new, empty or an earlier sweep's, whose finished runs are kept and skipped "
                        "(runs.jsonl); a folder holding anything else is refused")
    p.add_argument("--policies", help="comma-separated policies instead of each scenario's (default: the scenario's)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (replacing the scenario's seed)")
    seeds.add_argument("--seed-list", help="comma-separated seeds instead of --seeds (default: none)")
    p.add_argument("--grid", help="YAML grid of overrides, e.g. 'apps.camera.deadline_ms: [8, 12]' "
                                  "(default: none, each scenario as it is)")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="where runs go (default: ray when installed, else process)")
    p.add_argument("--workers", type=int, help="parallel workers (default: one per CPU, of the cluster with --address)")
    p.add_argument("--address", help="a Ray cluster to join, e.g. 10.0.0.5:6379 or auto (default: start a local "
                                     "Ray instance)")
    p.add_argument("--max-requests", type=int, help="stop each run after N requests (default: none, the whole run)")
    p.add_argument("--no-report", action="store_true", help="no pictures")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON instead of the tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("fleet", help="simulate a fleet (many independent copies of small scenarios, e.g. 1,000 "
                                     "phones in blocks sharing edge servers) sharded across workers, merged exactly")
    p.add_argument("fleet", help="a fleet YAML file (docs/FORMATS.md), e.g. scenarios/fleets/city.yaml")
    p.add_argument("--out", required=True,
                   help="results folder: new, empty or an earlier one of this tool's, replaced only when the "
                        "run succeeds; a folder holding anything else is refused")
    p.add_argument("--policies", help="comma-separated policies instead of the fleet's (default: the fleet's)")
    p.add_argument("--duration-s", type=float, help="simulated seconds of every copy (default: the fleet's)")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="where the copies go (default: ray when installed, else process)")
    p.add_argument("--workers", type=int, help="parallel workers (default: one per CPU, of the cluster with --address)")
    p.add_argument("--address", help="a Ray cluster to join (default: start a local Ray instance)")
    p.add_argument("--chunk-copies", type=int, help="copies per task sent to a worker (default: about four tasks "
                                                    "per worker)")
    p.add_argument("--json", action="store_true", help="print the run's figures and the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fleet)

    p = sub.add_parser("scenarios", help="list the shipped scenarios; 'copy NAME DIR' one for editing; 'schema' "
                                         "prints the scenario format's JSON Schema",
                       description="Without an ACTION: the shipped scenarios, one line each (name and description); "
                                   "run one with 'anytime simulate NAME --out DIR'.")
    p.add_argument("--json", action="store_true", help="the list as JSON (name, description, path)")
    p.set_defaults(func=_cmd_scenarios, action=None)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    copy = actions.add_parser("copy", help="copy a shipped scenario and the trace files it uses into a folder, "
                                           "never overwriting a file")
    copy.add_argument("name", help="a shipped scenario's name")
    copy.add_argument("folder", type=Path, help="where the copies go (created if needed)")
    actions.add_parser("schema", help="print the JSON Schema of the scenario format (docs/scenario.schema.json)")

    p = sub.add_parser("report", help="redraw the pictures and report.html of a results folder written by 'simulate'")
    p.add_argument("results", help="results folder")
    p.set_defaults(func=_cmd_report)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure ends in one line on stderr and the
    exit status of its kind (see the README's "Exit status")."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from nets.errors import AnytimeError

    where = f"anytime {args.command}"
    try:
        return args.func(args)
    except AnytimeError as exc:
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_status
    except json.JSONDecodeError as exc:
        print(f"{where}: error: bad JSON: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"{where}: I/O error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug still ends in one line; -v logs the traceback
        log.debug("internal error", exc_info=True)
        print(f"{where}: internal error: {type(exc).__name__}: {_one_line(exc)}"
              f"{'' if args.verbose else ' (rerun with -v for details)'}", file=sys.stderr)
        if args.verbose:
            log.error("traceback", exc_info=True)
        return EXIT_INTERNAL


def installed_version() -> str:
    """The installed distribution's version (its metadata), or a note that it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def _tty() -> bool:
    """Progress bars only on a terminal: carriage returns do not belong in logs."""
    return sys.stderr.isatty()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
