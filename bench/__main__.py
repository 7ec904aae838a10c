"""``python -m bench``: run the benchmark, print the table, write JSON, compare with a baseline."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from bench.report import compare, slurm_table, table, targets, wan_table
from bench.run import FULL, QUICK, ROOT, VARIANTS, Bench

RESULTS = ROOT / "bench" / "results"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "Side-by-side benchmark: local ipykernel, an ssh -L tunnel, proxykernel cold and warm, "
        "against a private sshd on 127.0.0.1."))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute)")
    parser.add_argument("--wan", action="store_true",
                        help="also measure through a delaying TCP proxy (20 ms each way)")
    parser.add_argument("--slurm", action="store_true",
                        help="also a kernel in a Slurm job, on a single-node cluster brought up here "
                             "(proxykernel/testing/slurm.py; needs slurm-wlm and munge)")
    parser.add_argument("--json", metavar="PATH", type=Path, default=RESULTS / "latest.json",
                        help="where to write the results (default: bench/results/latest.json)")
    parser.add_argument("--baseline", metavar="PATH", type=Path,
                        help="a JSON from an earlier run: print every figure that got worse")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="how much worse than the baseline counts as worse (default 0.10 = 10%%)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 3 when the baseline comparison finds something worse")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="a subset of %s (default: all)" % ",".join(VARIANTS))
    parser.add_argument("--concurrent", type=int, help="kernels started at once (default 20, quick 8)")
    args = parser.parse_args(argv)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error("unknown variant(s) %s; choose from %s" % (", ".join(unknown), ", ".join(VARIANTS)))
    sizes = QUICK if args.quick else FULL
    if args.concurrent is not None:
        from dataclasses import replace
        sizes = replace(sizes, concurrent=args.concurrent)
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "kernels.log"
    log_path.write_bytes(b"")
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with Bench(sizes, variants, wan=args.wan, log_path=log_path, say=say, slurm=args.slurm) as bench:
        result = bench.run()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(table(result))
    if result.get("wan"):
        print()
        print(wan_table(result))
    if args.slurm:
        print()
        print(slurm_table(result))
    checks = targets(result)
    if checks:
        print("\nissue 5 targets, on this run:")
        print(checks)
    print("\n%s; took %.0f s; kernels' log: %s; JSON: %s"
          % (result["meta"]["date"], result["meta"]["seconds"], log_path, args.json))
    if baseline is not None:
        worse = compare(result, baseline, args.tolerance)
        print("\ncompared with %s (tolerance %.0f%%): %s"
              % (args.baseline, 100 * args.tolerance, "%d figure(s) got worse" % len(worse) if worse
                 else "nothing got worse"))
        if baseline.get("meta", {}).get("sizes") != result["meta"]["sizes"]:
            print("  note: the baseline ran with other sizes (--quick or --concurrent differ): "
                  "compare like with like")
        for line in worse:
            print("  " + line)
        if worse and args.strict:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
