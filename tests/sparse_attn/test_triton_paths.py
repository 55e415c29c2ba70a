"""What the Triton paths do around the kernels, checked on CPU: fallbacks, devices, TF32, allocations.

No GPU here, so each GPU-only situation is made on CPU: a launch that raises Triton's own compile or
resource errors (monkeypatched), CUDA tensors on a second GPU (FakeTensorMode), torch's new TF32 API
(settable without CUDA), and a default device other than the inputs' (`torch.device("meta")`, which
catches any allocation that does not name the inputs' device, as CUDA inputs would).
"""

from __future__ import annotations

import logging

import pytest
import torch

import accel.sparse_attn as sa
from accel.sparse_attn import paths, pisa

triton = pytest.importorskip("triton")

from triton.compiler.errors import CompilationError  # noqa: E402
from triton.runtime.errors import OutOfResources, PTXASError  # noqa: E402

from accel.sparse_attn import pisa_triton, search_triton, triton_common, triton_kernel  # noqa: E402


def _inputs(B=1, H=2, S=96, D=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, S, D, generator=g).to(dtype) for _ in range(3))


def _index(q, k, tile=32, density=0.5):
    return sa.random_tiles(q.shape[0], q.shape[1], q.shape[2], k.shape[2], tile, density,
                           generator=torch.Generator().manual_seed(1))


@pytest.fixture
def as_if_cuda(monkeypatch):
    """"auto" picks the Triton kernels for CPU tensors, as it does for CUDA ones; failures are forgotten."""
    monkeypatch.setattr(triton_common, "INTERPRETED", True)
    monkeypatch.setattr(triton_common, "_failed", {})

    def pick_triton(choose):
        def choose_triton(q, backend, *args):
            return choose(q, "triton" if backend == "auto" else backend, *args)

        return choose_triton

    monkeypatch.setattr(sa.attention, "choose_path", pick_triton(sa.attention.choose_path))
    monkeypatch.setattr(pisa, "choose_path", pick_triton(pisa.choose_path))
    monkeypatch.setattr(sa.search, "choose_search_path", pick_triton(sa.search.choose_search_path))
    paths.engine._logged.clear()
    paths.search._logged.clear()
    yield
    paths.engine._logged.clear()
    paths.search._logged.clear()


def _failing(error: Exception, calls: list):
    def launch(*args, **kwargs):
        calls.append(1)
        raise error

    return launch


@pytest.mark.parametrize("error", [
    OutOfResources(327680, 232448, "shared memory"),
    CompilationError("src", None, "Cannot access global variable LN2"),
    PTXASError("ptxas fatal"),
])
def test_auto_falls_back_once_with_the_reason_and_explicit_triton_raises(as_if_cuda, monkeypatch, caplog, error):
    calls: list = []
    monkeypatch.setattr(triton_kernel, "attention", _failing(error, calls))
    q, k, v = _inputs()
    index = _index(q, k)
    want = sa.block_sparse_attention(q, k, v, index, backend="torch")
    with caplog.at_level(logging.WARNING, logger="accel"), sa.capture() as seen:
        out = sa.block_sparse_attention(q, k, v, index)
        again = sa.block_sparse_attention(q, k, v, index)
    assert torch.equal(out, want) and torch.equal(again, want)
    path = seen[-1]
    assert path.kernel == "torch" and type(error).__name__ in path.note and "block-sparse" in path.note
    assert len(calls) == 1, "a failed build is remembered: later calls go straight to the fallback"
    assert sum("falls back to torch" in r.message for r in caplog.records) == 1
    with pytest.raises(type(error)):
        sa.block_sparse_attention(q, k, v, index, backend="triton")


def test_pisa_and_search_fall_back_too(as_if_cuda, monkeypatch):
    calls: list = []
    monkeypatch.setattr(pisa_triton, "attention", _failing(OutOfResources(1, 0, "shared memory"), calls))
    monkeypatch.setattr(triton_kernel, "attention", _failing(OutOfResources(1, 0, "shared memory"), calls))
    monkeypatch.setattr(search_triton, "search", _failing(PTXASError("ptxas"), calls))
    q, k, v = _inputs()
    index = _index(q, k)
    want = sa.pisa_attention(q, k, v, index=index, backend="torch")
    with sa.capture() as seen:
        out = sa.pisa_attention(q, k, v, index=index)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert seen[-1].kernel == "pisa+torch"  # PISA's own and the engine's kernels both failed
    assert seen[-1].note.count("OutOfResources") == 2
    want_out, want_lse, want_mass = sa.dense_attention_with_tile_mass(q, k, v, 32, backend="torch")
    with sa.capture() as seen:
        out, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, 32)
    assert torch.equal(mass, want_mass) and "PTXASError" in seen[-1].note and seen[-1].kernel == "torch"
    assert len(calls) == 3
    with pytest.raises(PTXASError):
        sa.tile_mass(q, k, lse, 32, backend="triton")


def test_method_stats_name_the_fallback(as_if_cuda, monkeypatch, tiny):
    import accel

    monkeypatch.setattr(pisa_triton, "attention", _failing(OutOfResources(1, 0, "shared memory"), []))
    monkeypatch.setattr(triton_kernel, "attention", _failing(OutOfResources(1, 0, "shared memory"), []))
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="pisa", tile_size=16, dense_steps=0.0, dense_layers=0)
    try:
        latents = accel.zoo.generate(pipe, steps=2, seed=0)
        stats = handle.stats()["pisa"]
    finally:
        handle.unpatch()
    assert torch.isfinite(latents).all()
    assert stats["sparse_calls"] > 0 and "OutOfResources" in stats["kernel_fallback"]
    assert isinstance(stats["density"], float) and 0 < stats["density"] <= 1


def test_launches_run_on_the_tensors_gpu(monkeypatch):
    """Each wrapper enters its tensors' device before launching (Triton launches on the current one)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    entered: list = []
    launched: list = []

    class Device:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.pop()

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(entered[-1] if entered else None)

    monkeypatch.setattr(torch.cuda, "device", Device)
    # fake CUDA tensors cannot be sliced on a CPU-only build: PISA's dense tile map, made directly
    monkeypatch.setattr(sa.TileIndex, "to_dense", lambda self: torch.zeros(
        *self.counts.shape, self.num_kv_tiles, dtype=torch.bool, device=self.device))
    for module, name in ((triton_kernel, "_block_sparse_fwd_tuned"), (pisa_triton, "_pisa_fwd"),
                         (search_triton, "_search_fwd_tuned")):
        monkeypatch.setattr(module, name, Kernel())
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = (torch.empty(1, 2, 64, 32, device="cuda:1", dtype=torch.float16) for _ in range(3))
        index = sa.TileIndex(torch.ones(1, 1, 2, dtype=torch.int32, device="cuda:1"),
                             torch.zeros(1, 1, 2, 1, dtype=torch.int32, device="cuda:1"), 32, 32, 64, 64)
        triton_kernel.attention(q, k, v, index, 0.1)
        stats = pisa.KeyTileStats(*(torch.empty(1, 2, 2, 32, device="cuda:1") for _ in range(2)),
                                  torch.ones(2, device="cuda:1"), torch.empty(1, 2, 32, 32, device="cuda:1"))
        pisa_triton.attention(q, k, v, index, stats, 0.1, True)
        search_triton.search(q, k, v, None, 32, 32, 0.1)
    assert launched == [torch.device("cuda:1")] * 3


@pytest.fixture
def tf32_api():
    """Leaves torch's TF32 switches and accel's fp32 precision as they were."""
    yield
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.fp32_precision = "none"
    triton_common.set_fp32_precision("auto")


def test_fp32_precision_follows_torchs_new_tf32_api(tf32_api):
    assert triton_common.dot_precision(torch.float32) == "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # after this, reading allow_tf32 raises in torch
    with pytest.raises(RuntimeError):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018 (the trap this guards against)
    assert triton_common.dot_precision(torch.float32) == "tf32"
    assert triton_common.precision(torch.float32) == "fp32 (tf32 dot)"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert triton_common.dot_precision(torch.float32) == "ieee"
    torch.backends.cuda.matmul.fp32_precision = "none"  # inherit the global setting
    torch.backends.fp32_precision = "tf32"
    assert triton_common.dot_precision(torch.float32) == "tf32"
    # the path is chosen, not silently replaced, under the new API
    original = triton_common.INTERPRETED
    try:
        triton_common.INTERPRETED = True
        path = sa.attention.choose_path(torch.empty(1, 1, 4, 16), "auto")
        assert path.kernel == "cpu-kernel" and not path.note
        assert sa.attention.choose_path(torch.empty(1, 1, 4, 16), "triton").precision == "fp32 (tf32 dot)"
    finally:
        triton_common.INTERPRETED = original


def test_opt_in_near_fp32_mode(tf32_api):
    triton_common.set_fp32_precision("tf32x3")
    assert triton_common.dot_precision(torch.float32) == "tf32x3"
    assert triton_common.precision(torch.float32) == "fp32 (tf32x3 dot)"
    assert triton_common.dot_precision(torch.bfloat16) == "tf32"  # half precisions are unaffected
    with pytest.raises(ValueError, match="precision must be one of"):
        triton_common.set_fp32_precision("fp64")


def test_fp32_on_triton_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(triton_common, "_warned_fp32", False)
    with caplog.at_level(logging.WARNING, logger="accel"):
        triton_common.warn_fp32_once()
        triton_common.warn_fp32_once()
    assert sum("fp32 inputs reach the Triton kernels" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("backend", ["cpu-kernel", "torch"])
@pytest.mark.parametrize("default", ["device", "dtype"])
def test_every_allocation_follows_the_inputs(backend, default):
    """With another default device (meta) or default dtype (float64), every path still allocates on the
    inputs' device and returns its documented dtypes: a factory call without device= or dtype= would make
    a meta or float64 tensor, and the next op would fail or the output change type, as CPU tensors mixed
    with CUDA ones would."""
    q, k, v = _inputs(S=100, D=24)

    def run():
        index = _index(q, k)
        out, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, 32, backend=backend)
        density = sa.head_adaptive_density(mass, 0.5, sink_tiles=(-1,))
        return [
            sa.block_sparse_attention(q, k, v, index, backend=backend),
            sa.pisa_attention(q, k, v, density=0.3, tile_size=32, backend=backend),
            sa.pisa_attention(q, k, v, density=0.3, tile_size=32, routing="covariance", order="zeroth",
                              backend=backend),
            out, lse, mass, sa.tile_mass(q, k, lse, 32, backend=backend), density,
            sa.tiles_from_mass(mass, density, 32, 100, 100, sink_tiles=(-1,)).to_dense(),
            sa.select_tiles(q, k, 0.3, 32).to_dense(),
            sa.tile_order((4, 6, 6), (2, 2, 2), text_len=3).perm,
        ]

    want = run()
    if default == "device":
        with torch.device("meta"):
            got = run()
    else:
        torch.set_default_dtype(torch.float64)
        try:
            got = run()
        finally:
            torch.set_default_dtype(torch.float32)
    for a, b in zip(got, want, strict=True):
        assert a.device.type == "cpu" and a.dtype == b.dtype
        torch.testing.assert_close(a, b)
    assert want[0].dtype == torch.float32 and want[4].dtype == want[5].dtype == torch.float32


def test_offsets_within_one_head_must_fit_int32():
    big = torch.empty(1, 1, 2, 16, device="meta").as_strided((1, 1, 2, 16), (0, 0, 2**31, 1))
    with pytest.raises(RuntimeError, match="int32"):
        triton_common.check_offsets(q=big)
    triton_common.check_offsets(q=torch.empty(2, 40, 75_600, 128, device="meta"), v=None)  # Wan-14B 720p is fine
