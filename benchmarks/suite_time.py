"""The test suite's time now against an earlier commit's, on the same tests, on one machine.

    python benchmarks/suite_time.py select BEFORE_IDS > after.args
    python benchmarks/suite_time.py compare BEFORE.xml AFTER.xml [--out FILE]

The suite grows with the product, so its total time says little about whether the tests themselves
got faster. This compares like with like: the tests an earlier commit had, run there, against the
tests that carry them on now, run here, both on the same machine.

`select` reads the earlier suite's node ids (`pytest --collect-only -q` at that commit, one per
line) and prints the node ids that carry each of them on today, for `pytest @after.args`. A test is
carried on by the test of the same name (files moved into package folders since); RENAMED lists
the ones renamed or split, and a parametrized row whose index moved is found by its id's text.
A test in GONE has no successor: it is left out of both sides.

`compare` reads the two runs' JUnit XML (`--junitxml`) and prints one JSON object: tests and pytest
wall time on each side, and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Earlier name -> the tests that carry it on (files as they are now).
RENAMED = {
    "test_help_lists_the_commands": ["tests/jobs/test_cli.py::test_help_lists_the_commands[in-process]",
                                     "tests/jobs/test_cli.py::test_help_lists_the_commands[fresh-process]"],
    "test_kill9_at_ten_moments_then_resume": ["tests/test_kill_resume.py::test_kill9_at_twelve_moments_then_resume"],
    "test_stale_running_trial_is_failed_by_next_agent_and_status":
        ["tests/sweep/test_sweep_local.py::test_stale_running_trial_is_failed_by_next_agent_and_fail_stale"],
    "test_shipped_hyperband_gives_two_brackets":
        ["tests/sweep/test_sweep_spec.py::test_shipped_hyperband_is_wandbs_rule_with_bands_from_min_iter"],
    "test_a_run_the_sweep_stops_is_marked_pruned":
        ["tests/sweep/test_sweep_wandb.py::test_a_run_the_w_and_b_sweep_stops_is_marked_pruned"],
}
# It checked that two lists of figure names agreed; there is one list now (inat.figures.names).
GONE = {"test_figure_names_match_the_figures_module"}


def current_ids() -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if "::" in line]


def successors(before: list[str], now: list[str]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for nid in now:
        by_name.setdefault(nid.split("::", 1)[1], []).append(nid)
    found = {}
    for old in before:
        name = old.split("::", 1)[1]
        base, _, param = name.partition("[")
        if base in GONE:
            continue
        if name in by_name:
            found[old] = by_name[name]
        elif base in RENAMED:
            found[old] = RENAMED[base]
        elif param:  # a parametrized row whose index moved: match the rest of its id
            hits = [n for n in now if n.split("::", 1)[1].partition("[")[0] == base
                    and row_text(n.partition("[")[2]) == row_text(param)]
            if len(hits) != 1:
                raise SystemExit(f"suite_time: {old}: {len(hits)} tests carry it on now; add it to RENAMED")
            found[old] = hits
        else:
            raise SystemExit(f"suite_time: {old}: no test carries it on now; add it to RENAMED or GONE")
    return found


def row_text(param: str) -> tuple[str, ...]:
    """A parametrized row's id without the parts pytest numbers (`data7`, `fragments12`)."""
    return tuple(part for part in param.rstrip("]").split("-") if not re.fullmatch(r"[A-Za-z_]+\d+", part))


def junit(path: Path) -> tuple[int, float]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return int(suite.get("tests")), float(suite.get("time"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sel = sub.add_parser("select")
    sel.add_argument("before_ids", type=Path)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "select":
        before = [line.strip() for line in args.before_ids.read_text().splitlines() if "::" in line]
        found = successors(before, current_ids())
        print(f"suite_time: {len(found)} of {len(before)} earlier tests carried on", file=sys.stderr)
        print("\n".join(sorted({nid for nids in found.values() for nid in nids})))
        return
    (n_before, t_before), (n_after, t_after) = junit(args.before), junit(args.after)
    result = {"before": {"tests": n_before, "pytest_s": round(t_before, 1)},
              "after": {"tests": n_after, "pytest_s": round(t_after, 1)},
              "ratio_after_over_before": round(t_after / t_before, 3)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
