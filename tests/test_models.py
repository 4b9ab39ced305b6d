"""MinkUNet family on the torch backend: shapes, named features, configs, checkpoints, errors."""

from __future__ import annotations

import io

import pydantic
import pytest
import torch

from m2s.errors import ConfigError, DataError
from m2s.models import (
    BLOCKS,
    FEATURE_NAMES,
    FEATURE_STRIDES,
    ModelConfig,
    build_model,
    channel_plan,
    feature_channels,
)
from m2s.models.minkunet import ResidualBlock
from m2s.sparse import SparseTensor, pack_keys, voxel_mean
from m2s.sparse.synthetic import synthetic_scan
from parity_helpers import voxelize_cloud


@pytest.fixture(scope="module")
def scan() -> tuple[SparseTensor, torch.Tensor]:
    """A small structured scan (two batch items) voxelised at 0.1 m, plus point_to_voxel."""
    xyz0, i0 = synthetic_scan(3000, seed=0, extent=30.0)
    xyz1, i1 = synthetic_scan(2000, seed=1, extent=30.0)
    xyz = torch.cat([xyz0, xyz1])
    batch = torch.cat([torch.zeros(3000, dtype=torch.long), torch.ones(2000, dtype=torch.long)])
    coords, p2v = voxelize_cloud(xyz, batch, 0.1)
    feats = voxel_mean(torch.cat([xyz, torch.cat([i0, i1])[:, None]], 1), p2v, coords.shape[0])
    return SparseTensor(coords, feats), p2v


def small_model(size: int = 14, width: float = 0.25, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="minkunet", size=size, width=width), "torch")


def test_config_validation() -> None:
    cfg = ModelConfig(arch="minkunet")
    assert (cfg.size, cfg.width, cfg.in_channels, cfg.num_classes) == (18, 1.0, 4, 20)
    for bad in ({"size": 20}, {"width": 0.0}, {"arch": "resnet"}, {"num_classes": 0}, {"depth": 3}):
        with pytest.raises(pydantic.ValidationError):
            ModelConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_model({"arch": "minkunet"}, "torch")  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_feature_channels_follow_width(width: float) -> None:
    cfg = ModelConfig(width=width)
    ch = feature_channels(cfg)
    base = {"stem": 32, "down1": 32, "down2": 64, "down3": 128, "down4": 256,
            "up1": 256, "up2": 128, "up3": 96, "up4": 96, "decoder": 96}  # fmt: skip
    assert ch == {k: int(v * width) for k, v in base.items()}
    assert list(ch) == list(FEATURE_NAMES)
    assert channel_plan(cfg)[8] == ch["decoder"]


@pytest.mark.parametrize("size", [14, 18, 34])
def test_sizes_build_with_expected_block_counts(size: int) -> None:
    model = build_model(ModelConfig(size=size, width=0.25), "torch")
    n_blocks = sum(isinstance(m, ResidualBlock) for m in model.modules())
    assert n_blocks == sum(BLOCKS[size])
    assert model.backend_name == "torch"


def test_parameter_count_of_minkunet18_full_width() -> None:
    model = build_model(ModelConfig(size=18, width=1.0, in_channels=4, num_classes=19), "torch")
    n = sum(p.numel() for p in model.parameters())
    # SPVNAS MinkUNet18 (cr=1.0) has about 21.7M parameters.
    assert 21.0e6 < n < 22.5e6


@pytest.mark.parametrize("width", [0.25, 0.5])
def test_forward_shapes_and_named_features(scan: tuple[SparseTensor, torch.Tensor], width: float) -> None:
    x, p2v = scan
    model = small_model(14, width)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (x.num_voxels, 20)
    assert logits[p2v].shape == (p2v.numel(), 20)
    assert list(feats) == list(FEATURE_NAMES)
    ch = feature_channels(model.cfg)
    in_keys = pack_keys(x.coords)
    for name, t in feats.items():
        s = FEATURE_STRIDES[name]
        assert t.stride == s, name
        assert t.feats.shape == (t.coords.shape[0], ch[name]), name
        c = t.coords.long()
        assert bool((c[:, 1:] % s == 0).all()), f"{name} coordinates must be multiples of {s}"
        # Coordinates at stride s are exactly the occupied s-cells of the input.
        expect = torch.unique(
            torch.cat([x.coords[:, :1].long(), torch.div(x.coords[:, 1:].long(), s, rounding_mode="floor") * s], 1),
            dim=0,
        )
        assert torch.equal(torch.unique(c, dim=0), expect), name
    assert torch.equal(pack_keys(feats["stem"].coords), in_keys), "stride-1 features keep input order"
    assert torch.equal(feats["down3"].coords, feats["up1"].coords)
    assert torch.equal(feats["down1"].coords, feats["up3"].coords)
    assert feats["decoder"] is feats["up4"]
    # The classifier reads the decoder features.
    torch.testing.assert_close(model.classifier(feats["decoder"].feats), logits)


def test_selected_features_only(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model()
    _, feats = model(x, return_features=["down2", "decoder"])
    assert list(feats) == ["down2", "decoder"]
    with pytest.raises(ConfigError, match="unknown feature"):
        model(x, return_features=["down5"])
    assert isinstance(model(x), torch.Tensor)


def test_deterministic_and_row_order_equivariant(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model().eval()
    with torch.no_grad():
        a = model(x)
        b = model(x)
        perm = torch.randperm(x.num_voxels, generator=torch.Generator().manual_seed(0))
        c = model(SparseTensor(x.coords[perm], x.feats[perm]))
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a[perm], rtol=1e-5, atol=1e-5)


def test_batch_items_are_independent_in_eval(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model().eval()
    first = x.coords[:, 0] == 0
    with torch.no_grad():
        both = model(x)
        alone = model(SparseTensor(x.coords[first], x.feats[first]))
    torch.testing.assert_close(both[first], alone, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model(seed=1)
    model.train()
    model(x)  # updates batch-norm running statistics
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = small_model(seed=2).eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), model(x))
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    # Conv weights are stored in the canonical (K, C_in, C_out) layout.
    sd = model.state_dict()
    assert sd["stem.0.conv.weight"].shape == (27, 4, 8)
    assert sd["down1.down.conv.weight"].shape == (8, 8, 8)
    assert sd["up1.up.conv.weight"].shape == (8, 64, 64)


def test_training_step_reaches_every_parameter(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, p2v = scan
    model = small_model()
    labels = torch.randint(0, 20, (p2v.numel(),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x)[p2v], labels)
        loss.backward()
        losses.append(loss.item())
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing
        opt.step()
    assert losses[-1] < losses[0]


def test_bad_model_inputs(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model()
    with pytest.raises(ConfigError, match="input channels"):
        model(SparseTensor(x.coords, x.feats[:, :3]))
    bad = x.feats.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        model(SparseTensor(x.coords, bad))
    with pytest.raises(DataError, match="empty"):
        model(SparseTensor(x.coords[:0], x.feats[:0]))
    dup = torch.cat([x.coords, x.coords[:1]])
    with pytest.raises(DataError, match="duplicate"):
        model(SparseTensor(dup, torch.cat([x.feats, x.feats[:1]])))


def test_set_backend_keeps_weights(scan: tuple[SparseTensor, torch.Tensor]) -> None:
    x, _ = scan
    model = small_model().eval()
    with torch.no_grad():
        before = model(x)
    model.set_backend("torch")
    with torch.no_grad():
        assert torch.equal(model(x), before)
    with pytest.raises(ConfigError):
        model.set_backend("nope")
