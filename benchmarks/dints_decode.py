"""Size of the DiNTS topology space and cost of its topology-guaranteed decoding; prints JSON.

    .venv/bin/python benchmarks/dints_decode.py                  # 12 layers, 500 random logits
    .venv/bin/python benchmarks/dints_decode.py --layers 8 --samples 2000

For ``--samples`` random logit tensors ``N(0, scale^2)`` (scales 0.3, 1, 3, 10 in turn) it
reports the mean decoding time, how many transitions the decoded topologies keep per layer, how
often the decoded topology is a single path, and by how much its log probability exceeds that of
the best single path.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from autodeeplab import space
from autodeeplab import topology as T


def run(layers: int, samples: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    scales = (0.3, 1.0, 3.0, 10.0)
    elapsed, kept, single, gain = 0.0, [], 0, []
    for i in range(samples):
        logits = rng.normal(scale=scales[i % len(scales)], size=(layers, 4, 3))
        start = time.perf_counter()
        top = T.decode_topology(logits)
        elapsed += time.perf_counter() - start
        kept.append(np.mean([len(t) for t in top.layers]))
        single += top.is_single_path()
        path = T.Topology.from_path(T.best_single_path(logits))
        gain.append(T.topology_log_prob(logits, top) - T.topology_log_prob(logits, path))
    return {
        "layers": layers,
        "transitions_per_layer": [len(T.layer_transitions(lay)) for lay in range(layers)],
        "patterns_per_layer": [T.layer_patterns(lay).num_patterns for lay in range(layers)],
        "feasible_topologies": str(T.count_topologies(layers)),
        "single_paths": space.count_paths(layers),
        "samples": samples,
        "decode_ms_mean": 1e3 * elapsed / samples,
        "transitions_kept_per_layer_mean": float(np.mean(kept)),
        "single_path_share": single / samples,
        "log_prob_gain_over_best_single_path_mean": float(np.mean(gain)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=space.DEFAULT_LAYERS)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.layers < 1 or args.samples < 1:
        parser.error("--layers and --samples must be positive")
    print(json.dumps(run(args.layers, args.samples, args.seed), indent=2))


if __name__ == "__main__":
    main()
