"""The pure-PyTorch sparse backend against dense references, gradient checks, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m2s.errors import BackendUnavailable, ConfigError, DataError
from m2s.sparse import (
    COORD_MAX,
    COORD_MIN,
    OFFSETS_2,
    OFFSETS_3,
    SparseTensor,
    get_backend,
    pack_keys,
    unpack_keys,
    voxel_mean,
)
from m2s.sparse import backend as backend_mod
from m2s.sparse.torch_backend import TorchBackend


def random_coords(n: int, extent: int, batches: int = 2, seed: int = 0, offset: int = -5) -> torch.Tensor:
    """Unique random int32 [b, x, y, z] rows (includes negative coordinates)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.cat(
        [torch.randint(0, batches, (n, 1), generator=g), torch.randint(0, extent, (n, 3), generator=g) + offset],
        dim=1,
    )
    return torch.unique(c, dim=0).to(torch.int32)


def dense_grid(coords: torch.Tensor, feats: torch.Tensor, origin: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, size, size, size) dense volume with the sparse features scattered in."""
    b = int(coords[:, 0].max()) + 1
    vol = feats.new_zeros((b, feats.shape[1], size, size, size))
    rel = (coords[:, 1:].long() - origin)
    vol[coords[:, 0].long(), :, rel[:, 0], rel[:, 1], rel[:, 2]] = feats
    return vol


def sample_grid(vol: torch.Tensor, coords: torch.Tensor, origin: torch.Tensor, step: int = 1) -> torch.Tensor:
    rel = torch.div(coords[:, 1:].long() - origin, step, rounding_mode="floor")
    return vol[coords[:, 0].long(), :, rel[:, 0], rel[:, 1], rel[:, 2]]


def test_canonical_offsets() -> None:
    assert OFFSETS_3.shape == (27, 3) and OFFSETS_2.shape == (8, 3)
    assert OFFSETS_3[13].tolist() == [0, 0, 0]
    # The mirror of offset k sits at 26 - k (the torch backend relies on it).
    assert torch.equal(OFFSETS_3.flip(0), -OFFSETS_3)
    assert OFFSETS_3[1].tolist() == [-1, -1, 0]  # z fastest


def test_pack_unpack_roundtrip_and_order() -> None:
    c = torch.tensor(
        [[0, COORD_MIN, COORD_MIN, COORD_MIN], [3, COORD_MAX, COORD_MAX, COORD_MAX], [1, -1, 0, 1], [1, -1, 0, 2]],
        dtype=torch.int32,
    )
    keys = pack_keys(c)
    assert torch.equal(unpack_keys(keys), c)
    assert bool((keys >= 0).all())
    # Keys sort like (batch, x, y, z) tuples.
    order = torch.argsort(keys)
    expect = sorted(range(4), key=lambda i: tuple(c[i].tolist()))
    assert order.tolist() == expect


def test_voxel_mean() -> None:
    p2v = torch.tensor([0, 0, 2, 2, 2])
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    m = voxel_mean(f, p2v, 3)
    assert torch.allclose(m, torch.tensor([[2.0, 3.0], [0.0, 0.0], [2.0, 2.0]]))
    with pytest.raises(DataError):
        voxel_mean(f, p2v, 2)


def test_submanifold_conv_matches_dense_conv3d() -> None:
    be = TorchBackend()
    coords = random_coords(700, 12, batches=2, seed=3)
    feats = torch.randn(coords.shape[0], 5, dtype=torch.float64)
    w = torch.randn(27, 5, 7, dtype=torch.float64)
    x, order = be.prepare(SparseTensor(coords, feats))
    assert order is None
    y = be.subm_conv3(x, w)
    assert y.stride == 1 and torch.equal(y.coords, coords)
    origin = coords[:, 1:].long().min(0).values - 1
    vol = dense_grid(coords, feats, origin, 15)
    dense_w = w.view(3, 3, 3, 5, 7).permute(4, 3, 0, 1, 2)
    ref = sample_grid(F.conv3d(vol, dense_w, padding=1), coords, origin)
    torch.testing.assert_close(y.feats, ref)


def test_down_and_up_conv_match_dense() -> None:
    be = TorchBackend()
    coords = random_coords(500, 12, batches=2, seed=4, offset=-7)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    w_down = torch.randn(8, 3, 4, dtype=torch.float64)
    w_up = torch.randn(8, 4, 2, dtype=torch.float64)
    x, _ = be.prepare(SparseTensor(coords, feats))
    d = be.down_conv2(x, w_down)
    assert d.stride == 2
    c = d.coords.long()
    assert bool((c[:, 1:] % 2 == 0).all())
    expect = torch.unique(
        torch.cat([coords[:, :1].long(), torch.div(coords[:, 1:].long(), 2, rounding_mode="floor") * 2], 1), dim=0
    )
    assert torch.equal(c, expect), "coarse voxels are the occupied 2x2x2 cells, sorted"
    origin = torch.div(coords[:, 1:].long().min(0).values, 2, rounding_mode="floor") * 2
    vol = dense_grid(coords, feats, origin, 16)
    dw = w_down.view(2, 2, 2, 3, 4).permute(4, 3, 0, 1, 2)
    dense_down = F.conv3d(vol, dw, stride=2)
    torch.testing.assert_close(d.feats, sample_grid(dense_down, d.coords, origin, step=2))

    u = be.up_conv2(d, w_up, x)
    assert u.stride == 1 and torch.equal(u.coords, coords)
    uw = w_up.view(2, 2, 2, 4, 2).permute(3, 4, 0, 1, 2)  # conv_transpose3d: (C_in, C_out, k...)
    coarse_vol = dense_grid(d.coords, d.feats, origin, 16)[:, :, ::2, ::2, ::2]
    dense_up = F.conv_transpose3d(coarse_vol, uw, stride=2)
    torch.testing.assert_close(u.feats, sample_grid(dense_up, coords, origin))


def test_subm_conv_at_stride_2_uses_strided_neighbours() -> None:
    be = TorchBackend()
    coords = random_coords(400, 10, batches=1, seed=5)
    x, _ = be.prepare(SparseTensor(coords, torch.randn(coords.shape[0], 2, dtype=torch.float64)))
    d = be.down_conv2(x, torch.randn(8, 2, 3, dtype=torch.float64))
    w = torch.randn(27, 3, 2, dtype=torch.float64)
    y = be.subm_conv3(d, w)
    origin = d.coords[:, 1:].long().min(0).values - 2
    vol = dense_grid(d.coords, d.feats, origin, 16)[:, :, ::2, ::2, ::2]  # the stride-2 lattice
    ref = F.conv3d(vol, w.view(3, 3, 3, 3, 2).permute(4, 3, 0, 1, 2), padding=1)
    torch.testing.assert_close(y.feats, sample_grid(ref, d.coords, origin, step=2))


def test_unsorted_input_rows_give_permuted_outputs() -> None:
    be = TorchBackend()
    coords = random_coords(300, 8, seed=6)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    w = torch.randn(27, 3, 4, dtype=torch.float64)
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))
    x, _ = be.prepare(SparseTensor(coords, feats))
    xp, _ = be.prepare(SparseTensor(coords[perm], feats[perm]))
    torch.testing.assert_close(be.subm_conv3(xp, w).feats, be.subm_conv3(x, w).feats[perm])
    wd = torch.randn(8, 3, 2, dtype=torch.float64)
    dp, d = be.down_conv2(xp, wd), be.down_conv2(x, wd)
    assert torch.equal(dp.coords, d.coords)
    torch.testing.assert_close(dp.feats, d.feats)


def test_batches_do_not_interact() -> None:
    be = TorchBackend()
    c = random_coords(300, 6, batches=1, seed=7)
    both = torch.cat([c, c.clone().index_fill_(1, torch.tensor([0]), 1)])
    f = torch.randn(c.shape[0], 2, dtype=torch.float64)
    w = torch.randn(27, 2, 3, dtype=torch.float64)
    x1, _ = be.prepare(SparseTensor(c, f))
    x2, _ = be.prepare(SparseTensor(both, torch.cat([f, torch.zeros_like(f)])))
    y1, y2 = be.subm_conv3(x1, w), be.subm_conv3(x2, w)
    torch.testing.assert_close(y2.feats[: c.shape[0]], y1.feats)
    assert float(y2.feats[c.shape[0]:].abs().max()) == 0.0


def test_kernel_maps_built_once_per_forward() -> None:
    be = TorchBackend()
    coords = random_coords(300, 8, seed=8)
    x, _ = be.prepare(SparseTensor(coords, torch.randn(coords.shape[0], 2)))
    w = torch.randn(27, 2, 2)
    be.subm_conv3(be.subm_conv3(x, w), w)
    first = x.manager.subm_maps[1]
    be.subm_conv3(x, w)
    assert x.manager.subm_maps[1] is first and len(x.manager.subm_maps) == 1
    d = be.down_conv2(x, torch.randn(8, 2, 2))
    be.up_conv2(d, torch.randn(8, 2, 2), x)
    assert list(x.manager.down_maps) == [1]
    x2, _ = be.prepare(SparseTensor(coords, torch.randn(coords.shape[0], 2)))
    assert x2.manager is not x.manager, "each forward gets its own cache"


def _small_case(seed: int) -> tuple[SparseTensor, TorchBackend]:
    be = TorchBackend()
    coords = random_coords(60, 5, batches=2, seed=seed)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64, requires_grad=True)
    return SparseTensor(coords, feats), be


def test_gradcheck_subm_conv() -> None:
    x, be = _small_case(10)
    w = torch.randn(27, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        t, _ = be.prepare(SparseTensor(x.coords, feats))
        return be.subm_conv3(t, weight).feats

    assert torch.autograd.gradcheck(f, (x.feats, w))


def test_gradcheck_down_conv() -> None:
    x, be = _small_case(11)
    w = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        t, _ = be.prepare(SparseTensor(x.coords, feats))
        return be.down_conv2(t, weight).feats

    assert torch.autograd.gradcheck(f, (x.feats, w))


def test_gradcheck_up_conv() -> None:
    x, be = _small_case(12)
    w = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    t, _ = be.prepare(SparseTensor(x.coords, x.feats.detach()))
    coarse = be.down_conv2(t, torch.randn(8, 3, 2, dtype=torch.float64))
    cf = coarse.feats.detach().clone().requires_grad_(True)

    def f(feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return be.up_conv2(coarse.replace(feats), weight, t).feats

    assert torch.autograd.gradcheck(f, (cf, w))


def test_gradcheck_chain_at_stride_2() -> None:
    """Down conv -> strided submanifold conv -> up conv, all gradients at once."""
    x, be = _small_case(13)
    wd = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(27, 2, 2, dtype=torch.float64, requires_grad=True)
    wu = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t, _ = be.prepare(SparseTensor(x.coords, feats))
        return be.up_conv2(be.subm_conv3(be.down_conv2(t, a), b), c, t).feats

    assert torch.autograd.gradcheck(f, (x.feats, wd, ws, wu))


@pytest.mark.parametrize(
    ("coords", "feats", "msg"),
    [
        (torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 3), "empty"),
        (torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), torch.tensor([[1.0, float("nan"), 0.0]]), "NaN"),
        (torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), torch.tensor([[1.0, float("inf"), 0.0]]), "NaN or inf"),
        (torch.tensor([[0, COORD_MAX + 1, 0, 0]], dtype=torch.int32), torch.zeros(1, 3), "must lie in"),
        (torch.tensor([[0, 0, COORD_MIN - 1, 0]], dtype=torch.int32), torch.zeros(1, 3), "must lie in"),
        (torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32), torch.zeros(1, 3), "batch"),
        (torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32), torch.zeros(2, 3), "duplicate"),
        (torch.tensor([[0, 1, 1, 1]], dtype=torch.int32), torch.zeros(2, 3), "feature rows"),
        (torch.tensor([[0, 1, 1]], dtype=torch.int32), torch.zeros(1, 3), r"\(V, 4\)"),
        (torch.tensor([[0.0, 1, 1, 1]]), torch.zeros(1, 3), "int32"),
    ],
)
def test_bad_inputs_raise_data_error(coords: torch.Tensor, feats: torch.Tensor, msg: str) -> None:
    with pytest.raises(DataError, match=msg):
        TorchBackend().prepare(SparseTensor(coords, feats))


def test_weight_and_tensor_mismatches_are_reported() -> None:
    be = TorchBackend()
    coords = random_coords(50, 5, seed=14)
    x, _ = be.prepare(SparseTensor(coords, torch.randn(coords.shape[0], 3)))
    with pytest.raises(ConfigError, match="weight"):
        be.subm_conv3(x, torch.randn(27, 4, 2))
    with pytest.raises(ConfigError, match="weight"):
        be.down_conv2(x, torch.randn(27, 3, 2))
    with pytest.raises(ConfigError, match="backend"):
        be.subm_conv3(SparseTensor(coords, x.feats), torch.randn(27, 3, 2))
    d = be.down_conv2(x, torch.randn(8, 3, 3))
    y, _ = be.prepare(SparseTensor(coords, torch.randn(coords.shape[0], 3)))
    with pytest.raises(ConfigError, match="same forward"):
        be.up_conv2(d, torch.randn(8, 3, 3), y)
    with pytest.raises(DataError, match="stride 1"):
        be.prepare(SparseTensor(d.coords, d.feats, stride=2))


def test_get_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_backend("torch").name == "torch"
    be = TorchBackend()
    assert get_backend(be) is be
    with pytest.raises(ConfigError, match="unknown sparse backend"):
        get_backend("cuda")
    monkeypatch.setattr(backend_mod, "minkowski_status", lambda: (False, "cannot import MinkowskiEngine (test)"))
    monkeypatch.setattr(backend_mod, "spconv_status", lambda: (False, "cannot import spconv (test)"))
    assert get_backend("auto").name == "torch"
    with pytest.raises(BackendUnavailable, match="make setup"):
        get_backend("minkowski")
