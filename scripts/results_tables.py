"""Print the results table of every scenario run by scripts/simulate_all.sh
(reports/<scenario>/), as Markdown for docs/RESULTS.md."""

from pathlib import Path

from simulator.report import load_results, results_table

for folder in sorted(Path("reports").iterdir()):
    if (folder / "summary.json").exists():
        summary = load_results(folder)[0]
        print(f"### {summary['scenario']}\n\n{summary['description']}\n\n{results_table(summary)}\n")
