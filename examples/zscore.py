"""Distributed arrays in the driver model: z-scores, R's recycling and a chained call.

Rank 0 scripts, the other ranks serve (``with m.driver() as d``). The
driver makes a distributed vector of samples in unequal chunks, standardises
it (mean and standard deviation by map-reduce, then one elementwise call),
weighs it with a short pattern of weights that R's recycling repeats along
the vector, and counts the outliers. It then checks every result against
numpy on one rank and prints PASS or FAIL (exit status 1)::

    mpiexec -n 4 python examples/zscore.py
    mpiexec -n 2 python examples/zscore.py --samples 2000000 --chunks 7
    python examples/zscore.py
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

import conveyor as cv


def standardise(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return (x - mean) / sd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_003, help="length of the vector")
    parser.add_argument("--chunks", type=int, default=5, help="how many (unequal) chunks")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    with cv.Messenger() as m:
        with m.driver(root=0) as d:
            if d is None:
                return 0  # served the driver until it was done
            rng = np.random.default_rng(args.seed)
            samples = rng.normal(10.0, 3.0, args.samples)
            cuts = np.sort(rng.choice(np.arange(1, args.samples), args.chunks - 1, replace=False))
            sizes = np.diff(np.concatenate([[0], cuts, [args.samples]]))
            x = d.array(samples, chunks=sizes)

            mean = x.mean()
            sd = np.sqrt(((x - mean) ** 2).mean())
            # Issued before `z` is computed: each chunk waits for its inputs.
            z = d.dcall(standardise, x, mean, sd)
            weights = d.array(np.array([1.0, 0.5, 0.25]))  # recycled along z
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                weighted = d.dcall(np.multiply, z, weights)  # R's recycling: dcall's
            outliers = int((abs(z) > 3).sum())
            total = float(weighted.sum())

            expected_z = (samples - samples.mean()) / samples.std()
            expected_weighted = expected_z * np.resize([1.0, 0.5, 0.25], args.samples)
            checks = {
                "z-scores": np.allclose(z.collect(), expected_z),
                "outliers": outliers == int((np.abs(expected_z) > 3).sum()),
                "weighted sum": np.isclose(total, expected_weighted.sum()),
                "recycling warning": (args.samples % 3 != 0)
                == any(issubclass(w.category, cv.RecyclingWarning) for w in caught),
                "chunking kept": [c.length for c in z.chunks] == sizes.tolist(),
            }
            print(
                f"{args.samples} samples in {len(x.chunks)} chunks on {m.size} ranks: "
                f"mean {mean:.4f}, sd {sd:.4f}, {outliers} outliers beyond 3 sd, "
                f"weighted sum {total:.4f}"
            )
            for name, ok in checks.items():
                print(f"  {name}: {'ok' if ok else 'WRONG'}")
            passed = all(checks.values())
            print("PASS" if passed else "FAIL")
            return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
