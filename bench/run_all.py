"""`make bench`: every benchmark script in this folder, one after another.

All figures are measured on the benchmark data set that ../shared/bench/gen_data.py
generates (403,730 rows, 2,000 sequences); each script creates it in bench/out/ when
missing. Pass script names to run only those: `python bench/run_all.py bench_train.py`.
"""

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(names) -> int:
    scripts = names or sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "bench_*.py")))
    failed = []
    for script in scripts:
        print(f"\n=== {script}", flush=True)
        if subprocess.run([sys.executable, os.path.join(HERE, script)]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
