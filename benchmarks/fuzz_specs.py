"""Fuzz the pilot's job-spec handling far beyond the test run's 10 000 cases.

Random job dicts (hostile names, wrong types, misaligned lists, huge numbers, non-ASCII)
go through parsing, storage-path building and payload-command building; anything but
success or BadJobSpec is a bug.  Prints cases per second and the outcome counts.

    python benchmarks/fuzz_specs.py [--cases 200000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers live beside benchmarks/

from tests.core.jobdicts import FUZZ_KEYS as KEYS
from tests.core.jobdicts import reco_job_dict
from tests.core.test_job import check_fuzzed_spec

ATOMS = [
    "",
    "NULL",
    None,
    "..",
    "../x",
    "/etc/passwd",
    "-rf",
    "a b",
    "x\x00y",
    "é",
    "ad:zz",
    "1,2,3",
    ",,",
    "--run 1;rm",
    10**30,
    -1,
    0,
    1.5,
    True,
    [],
    {},
    ["a"],
    "a" * 5000,
    "mDST-1-2-3-4.root",
]


def value(rng: random.Random) -> object:
    if rng.random() < 0.5:
        return rng.choice(ATOMS)
    return ",".join(str(rng.choice(ATOMS)) for _ in range(rng.randint(1, 4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()
    for _ in range(args.cases):
        overrides = {rng.choice(KEYS): value(rng) for _ in range(rng.randint(1, 6))}
        try:
            outcomes["runnable" if check_fuzzed_spec(reco_job_dict(**overrides)) else "refused (BadJobSpec)"] += 1
        except Exception as exc:  # a crash: report it
            outcomes[f"CRASH {type(exc).__name__}: {exc}"[:120]] += 1
    elapsed = time.perf_counter() - start
    print(f"{args.cases} cases in {elapsed:.1f} s ({args.cases / elapsed:.0f}/s)")
    for outcome, n in outcomes.most_common():
        print(f"  {n:>8}  {outcome}")


if __name__ == "__main__":
    main()
