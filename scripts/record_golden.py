"""Record the golden results of issue #23 (tests/golden/results.json) from the code as it is now.

    .venv/bin/python scripts/record_golden.py [--out PATH] [--only ID ...]

Runs every case of tests/golden/cases.py in-process, exactly as tests/golden/test_golden.py composes and runs
it, and writes each run's test metrics and best_epoch. Only rerun it where a change of results is intended and
explained; tests/golden/test_golden.py then holds the code to the new numbers (to 1e-6).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.golden.cases

from tests.golden.cases import (  # noqa: E402 - after the path
    CASES, RESULTS, TOLERANCE, case_overrides, case_results, compose_config, missing_source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"where to write (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--only", nargs="*", default=None, help="case ids to record (the others are kept from --out)")
    args = parser.parse_args(argv)

    from mtlexp.train import train

    previous = json.loads(args.out.read_text())["cases"] if args.only and args.out.is_file() else {}
    recorded = {}
    for case in CASES:
        if args.only and case.id not in args.only:
            if case.id in previous:
                recorded[case.id] = previous[case.id]
            continue
        why = missing_source(case)
        if why:
            sys.exit(f"record_golden: {case.id}: {why}; every case must be recorded")
        started, cpu = time.time(), time.process_time()
        with tempfile.TemporaryDirectory(prefix=f"golden-{case.id}-") as work:
            cfg = compose_config(case_overrides(case, Path(work)), Path(work) / "run")
            runs = case_results(case, cfg, train)
        recorded[case.id] = {"overrides": list(case.overrides), "runs": runs}
        print(f"record_golden: {case.id}: {time.time() - started:.1f} s ({time.process_time() - cpu:.1f} s CPU)",
              file=sys.stderr)
    document = {
        "about": "Golden test results of today's main (issue #23): written by scripts/record_golden.py, held to "
                 f"{TOLERANCE:g} (abs and rel) by tests/golden/test_golden.py. Cases: tests/golden/cases.py.",
        "cases": recorded,
    }
    args.out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"record_golden: wrote {len(recorded)} cases to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
