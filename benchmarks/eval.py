"""Evaluation speed: ``fd_fmnist`` of 10,000 images, PRD F-scores of 10,000 x 10,000 features,
and Inception feature throughput.

* ``fd_fmnist_10k_seconds``: 10,000 Fashion-MNIST training images (standing in for samples)
  against the 10,000-image test split: classifier features of both sets plus the Fréchet
  distance (target <= 10 s on 2 threads), with the classifier mvq ships (its id and test
  accuracy are reported with it).
* ``prd_10k_seconds``: ``prd_f_scores`` on 10,000 x 10,000 features of width 2048 (target
  <= 30 s), drawn from a mixture of 50 Gaussian clusters (real features have clusters; pure
  noise makes k-means run longer than it does on them); ``prd_10k_128d_seconds`` at the
  fd_fmnist feature width.
* ``inception_images_per_s_cpu`` (and ``_cuda`` with a GPU): torch-fidelity's Inception on
  28x28 gray images, only when its weights file is already on disk (this benchmark never
  downloads); otherwise reported as unavailable with the resolver's reason.

On a shared machine the figures are noisy: the load average is printed with them. The last
line is one JSON object with every figure.

Usage: python benchmarks/eval.py [--threads 2] [--inception-images 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """``(n, dim)`` points around ``clusters`` random centres (spread 1, centres ~N(0, 0.5))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 0.5
    return centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) / np.sqrt(dim) * 8


def bench_fd_fmnist() -> dict[str, float]:
    """Seconds for fd_fmnist of 10,000 training images against the test split."""
    from mvq.data import build_dataset
    from mvq.metrics import fd_fmnist, shipped_classifier

    t0 = time.perf_counter()
    classifier = shipped_classifier()
    setup = time.perf_counter() - t0
    images = build_dataset("fashion_mnist", None, "train").images[:10_000]
    reference = build_dataset("fashion_mnist", None, "val").images
    t0, c0 = time.perf_counter(), time.process_time()
    value = fd_fmnist(classifier.model, images, reference)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"fd_fmnist 10k vs test split: {seconds:.2f} s ({cpu:.2f} CPU s), value {value:.3f}, "
        f"shipped classifier {classifier.meta['key']}, accuracy "
        f"{classifier.meta['accuracy']:.4f}"
    )
    out = {
        "fd_fmnist_10k_seconds": seconds,
        "fd_fmnist_10k_cpu_seconds": cpu,
        "fd_fmnist_10k_train_vs_test": value,
        "classifier_accuracy": classifier.meta["accuracy"],
        "classifier_id": classifier.meta["key"],
        "classifier_load_seconds": setup,
    }
    return out


def bench_prd(threads: int) -> dict[str, float]:
    """Seconds for prd_f_scores on 10k x 10k features, width 2048 and 128."""
    from threadpoolctl import threadpool_limits

    from mvq.metrics import prd_f_scores

    out = {}
    for dim, name in ((2048, "prd_10k_seconds"), (128, "prd_10k_128d_seconds")):
        a, b = clustered(10_000, dim, 0), clustered(10_000, dim, 1)
        t0, c0 = time.perf_counter(), time.process_time()
        with threadpool_limits(threads):  # BLAS and scikit-learn's OpenMP
            f8, f1_8 = prd_f_scores(a, b)
        out[name] = time.perf_counter() - t0
        out[f"{name.removesuffix('_seconds')}_cpu_seconds"] = time.process_time() - c0
        print(f"prd_f_scores 10k x 10k x {dim}: {out[name]:.2f} s, F_8 {f8:.3f}, F_1/8 {f1_8:.3f}")
    return out


def bench_inception(n: int) -> dict[str, object]:
    """Inception images/s on the CPU (and GPU), when the weights are on disk."""
    from mvq.metrics import WEIGHTS, WeightsUnavailable, inception_features, load_inception
    from mvq.metrics.weights import resolve_weights

    try:
        resolve_weights(WEIGHTS["inception"], download=False)
    except WeightsUnavailable as err:
        print(f"inception: unavailable ({err})")
        return {"inception_images_per_s_cpu": None, "inception_unavailable": str(err)}
    out: dict[str, object] = {}
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        model = load_inception(device=device)
        inception_features(model, images[:8])  # warm-up
        count = n if device == "cuda" else min(n, 200)
        t0 = time.perf_counter()
        inception_features(model, images[:count])
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"inception_images_per_s_{device}"] = count / (time.perf_counter() - t0)
        print(f"inception on {device}: {out[f'inception_images_per_s_{device}']:.1f} images/s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inception-images", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"threads {args.threads}, load average at start {load:.2f} on {os.cpu_count()} CPUs")
    result: dict[str, object] = {"threads": args.threads, "load_average_start": load}
    result |= bench_fd_fmnist()
    result |= bench_prd(args.threads)
    result |= bench_inception(args.inception_images)
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
