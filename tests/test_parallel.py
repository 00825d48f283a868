"""The compiled kernels over threads (mmsae.engine.parallel): on torch's OpenMP threads
through the kernels' tasks, and on the fallback thread pool, every range kernel gives what
one call over the whole range gives, bit for bit."""

import numpy as np
import pytest
import torch

from mmsae.engine import kernels, parallel


def _openmp_torch() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def test_backend_finds_torchs_openmp_and_obeys_the_switch(monkeypatch):
    if not (_openmp_torch() and parallel.sys.platform == "linux"):
        pytest.skip("torch here is not built with OpenMP on Linux")
    monkeypatch.delenv("MMSAE_KERNEL_THREADS", raising=False)
    assert parallel.backend() == "openmp"
    assert hasattr(parallel._OPENMP, "GOMP_parallel")
    monkeypatch.setenv("MMSAE_KERNEL_THREADS", "pool")
    assert parallel.backend() == "pool"


def _cases(rng):
    """``(kernel, n, make_args)``: ``make_args()`` gives fresh arguments (outputs included)."""
    m, d, R, K = 700, 40, 300, 8
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    W = f(m, d)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    G, Mo, Vo = f(m, d), f(m, d), np.abs(f(m, d))
    idx = np.stack([rng.choice(m, K, replace=False) for _ in range(R)]).astype(np.int64)
    order, ptr = kernels.entries_by_latent(idx.reshape(-1), m)
    U, g, vals, Gd = f(R, d), f(R * K), f(R * K), f(R, d)
    rowmod = (np.arange(R) >= R // 2).astype(np.int64)
    pre, b = f(R, m), f(m)
    pairs = rng.integers(0, 1000, R).astype(np.int64)
    idx_y = np.concatenate([idx[:, :K // 2], (idx[:, K // 2:] + 1) % m], axis=1)  # half shared with x
    no_rows = np.empty(0, np.int64)
    pgroup = np.sort(rng.integers(0, 3, (R, K)), axis=1).reshape(-1).astype(np.int64)  # by group within a row
    f32 = np.float32
    return [
        (kernels.adam_rows, m, lambda: (W.copy(), G, Mo.copy(), Vo.copy(), f32(1e-3), f32(0.9), f32(0.999),
                                        f32(1e-8), f32(0.3), True)),
        (kernels.project_rows, m, lambda: (W, G.copy())),
        (kernels.renorm_rows, m, lambda: (3 * W,)),
        (kernels.decoder_backward, m, lambda: (Gd, W, no_rows, K, vals, order, ptr, np.empty((m, d), np.float32),
                                               np.empty(R * K, np.float32))),
        (kernels.encoder_backward, m, lambda: (U, no_rows, K, g, rowmod, order, ptr, np.empty((m, d), np.float32),
                                               np.zeros((2, m), np.float32))),
        (kernels.scan_rows, R, lambda: (pre, b, 16, 20, K, True, np.uint64(12345), np.uint64(2 ** 31), True, pairs,
                                        np.zeros((R, K), np.float32), np.full((R, K), -7, np.int64))),
        (kernels.scan_rows, R, lambda: (pre, np.empty(0, np.float32), 16, K, K, False, np.uint64(0), np.uint64(0),
                                        False, no_rows, np.zeros((R, K), np.float32), np.full((R, K), -7, np.int64))),
        (kernels.decode_rows, R, lambda: (W, vals.reshape(R, K), idx, np.full((R, d), np.nan, np.float32))),
        (kernels.prefix_errors, R, lambda: (W, vals, idx.reshape(-1), pgroup, np.arange(0, R * K + 1, K), 3,
                                            Gd[:2].copy(), rowmod, U, np.full((3 * R, d), np.nan, np.float32),
                                            np.full(3 * R, np.nan, np.float32), np.full((R, d), np.nan, np.float32))),
        (kernels.prefix_suffix_sums, R, lambda: (np.concatenate([Gd, Gd, Gd]), np.abs(g[:3 * R]).copy(), 3)),
        (kernels.decode_errors, R, lambda: (W, vals.reshape(R, K), idx, Gd[:2].copy(), rowmod, U, np.full((R, d), np.nan, np.float32),
                                            np.full((R, d), np.nan, np.float32), np.full(R, np.nan, np.float32),
                                            np.full((R, K), np.nan, np.float32))),
        (kernels.decoder_value_grads, R * K, lambda: (Gd, W, no_rows, K, idx.reshape(-1),
                                                      np.full(R * K, np.nan, np.float32))),
        (kernels.adam_entries, m, lambda: (W.copy(), Mo.copy(), Vo.copy(), Gd, np.repeat(np.arange(R), K), vals, order,
                                           ptr, f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(0.3), True,
                                           no_rows, np.empty((0, 0), np.float32), 0, 1)),
        (kernels.group_l21_rows, R, lambda: (np.abs(vals.reshape(R, K)), idx, np.abs(g.reshape(R, K)), idx_y,
                                             np.zeros((R, K), np.float32), np.zeros((R, K), np.float32),
                                             np.zeros(R, np.float64))),
    ]


@pytest.mark.parametrize("backend", ["openmp", "pool"])
def test_every_range_kernel_is_bit_identical_over_threads(backend, monkeypatch, two_threads):
    if backend == "openmp" and not _openmp_torch():
        pytest.skip("torch here is not built with OpenMP")
    monkeypatch.setenv("MMSAE_KERNEL_THREADS", backend)
    assert parallel.backend() == backend
    assert set(kernels.TASK_ARGS) == {c[0] for c in _cases(np.random.default_rng(0))}
    for kernel, n, make in _cases(np.random.default_rng(0)):
        whole = make()
        kernel(*whole, 0, n)
        for cuts in ([0, n // 2, n], [0, 1, n // 3, n // 3, n - 5, n]):  # more ranges than threads, an empty one
            if backend == "openmp":  # the task reads these arguments: nothing falls back to the pool
                assert parallel._pack(kernels.TASK_ARGS[kernel][1], np.asarray(cuts, np.int64), make()) is not None
            split = make()
            parallel.run_ranges(kernel, cuts, *split)
            for a, b in zip(whole, split):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b, err_msg=kernel.__name__)


def test_arguments_the_task_cannot_read_go_to_the_pool(monkeypatch, two_threads):
    """A wrong dtype, rank, a strided array or an int for a bool: no block is written, and the
    pool runs the kernel instead (the same answer)."""
    spec = kernels.TASK_ARGS[kernels.adam_rows][1]
    cuts = np.array([0, 4, 8], np.int64)
    P = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    f32 = np.float32
    good = (P, P, P, P, f32(1), f32(0.9), f32(0.9), f32(1e-8), f32(1), True)
    assert parallel._pack(spec, cuts, good) is not None
    for i, bad in [(0, P.astype(np.float64)), (1, P[:, :3]), (2, P.reshape(-1)), (9, 1), (4, 1)]:
        args = list(good)
        args[i] = bad
        assert parallel._pack(spec, cuts, tuple(args)) is None, i
    assert parallel._pack(spec, cuts, good[:-1]) is None
    W = np.random.default_rng(2).standard_normal((2048, 12)).astype(np.float32)
    strided = np.asfortranarray(W)  # not C-contiguous: the pool's numba call takes it
    parallel.run_ranges(kernels.renorm_rows, [0, 1024, 2048], strided)
    np.testing.assert_allclose(np.linalg.norm(strided, axis=1), 1.0, rtol=1e-5)


def test_a_team_of_one_still_runs_every_range(monkeypatch, threads):
    """With torch on one thread the team is the calling thread alone (never more threads than
    torch's count), and it takes every range off the counter."""
    if not _openmp_torch():
        pytest.skip("torch here is not built with OpenMP")
    monkeypatch.setenv("MMSAE_KERNEL_THREADS", "openmp")
    threads(1)
    W = np.random.default_rng(3).standard_normal((900, 16)).astype(np.float32) * 3
    ref = W / np.linalg.norm(W, axis=1, keepdims=True)
    parallel.run_ranges(kernels.renorm_rows, [0, 100, 100, 450, 900], W)
    np.testing.assert_allclose(W, ref, rtol=1e-6, atol=1e-7)
