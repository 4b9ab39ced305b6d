"""Wiring of the distillation module: what reaches the losses, and on which rows.

The loss functions have their own hand-computed tests (test_distill_losses.py); here the question
is whether `DistillModule` hands them the configured temperature and weights and the teacher's
rows of the student's *own* voxels at every scale. Fake networks whose logits and features are
fixed functions of each voxel's coordinates make both checkable exactly: a teacher that encodes
coordinates like the student gives every term exactly 0 when rows are matched, and anything
else when one row is off. The graph term is checked against a reference written with plain
loops over a handful of voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from m2s.distill.config import DistillConfig
from m2s.distill.losses import LocalGraphKD, class_affinity_kd, feature_kd, logit_kd
from m2s.distill.task import DistillModule, StudentConfig
from m2s.fuse import open_fused_cache
from m2s.inference import LoadedModel
from m2s.labels import load_label_manifest
from m2s.models import FEATURE_NAMES, FEATURE_STRIDES, feature_channels
from m2s.sparse.tensor import SparseTensor
from m2s.train.config import build_config
from m2s.train.dataset import Batch, ScanDataset, collate_views
from m2s.train.losses import SegmentationLoss

LABELS = load_label_manifest()


# ---- fake networks -----------------------------------------------------------------------------
def _projection(width: int) -> torch.Tensor:
    """A fixed (4, width) float64 projection, the same for every net (seeded by the width)."""
    return torch.randn(4, width, generator=torch.Generator().manual_seed(1000 + width), dtype=torch.float64)


def encode(coords: torch.Tensor, width: int, phase: float) -> torch.Tensor:
    """(V, width) float32 values that differ from voxel to voxel and depend on nothing but the
    voxel's ``[b, x, y, z]``: element-wise only (no matmul), so a row gets bitwise the same
    values whatever else is in the tensor."""
    c = coords.to(torch.float64)
    p = _projection(width)
    z = c[:, 0:1] * p[0] + c[:, 1:2] * p[1] + c[:, 2:3] * p[2] + c[:, 3:4] * p[3]
    return (4.0 * torch.sin(0.37 * z + phase)).float()


class CoordNet(nn.Module):
    """Stands in for a MinkUNet: logits and every named feature are `encode` of the voxel
    coordinates (times a learnable scale, so a student has gradients). Stride-s features live on
    the MinkowskiEngine grid (coordinates floored to multiples of s); `shuffle` returns them in a
    row order of their own, as a real backend may."""

    def __init__(self, num_classes: int, channels: dict[str, int], *, phase: float = 0.0,
                 shift: Sequence[int] = (0, 0, 0, 0), shuffle: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = channels
        self.phase = phase
        self.shift = torch.tensor(shift, dtype=torch.long)  # encode a neighbour's coordinates
        self.shuffle = shuffle
        self.scale = nn.Parameter(torch.ones(()))

    def _values(self, coords: torch.Tensor, width: int) -> torch.Tensor:
        return self.scale * encode(coords.long() + self.shift, width, self.phase)

    def forward(
        self, x: SparseTensor, return_features: bool | Sequence[str] = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, SparseTensor]]:
        logits = self._values(x.coords, self.num_classes)
        if not return_features:
            return logits
        names = list(FEATURE_NAMES) if return_features is True else list(return_features)
        feats = {}
        for name in names:
            s = FEATURE_STRIDES[name]
            c = x.coords.long()
            strided = torch.unique(torch.cat([c[:, :1], torch.div(c[:, 1:], s, rounding_mode="floor") * s], 1), dim=0)
            if self.shuffle:
                strided = strided[torch.randperm(strided.shape[0], generator=torch.Generator().manual_seed(s))]
            feats[name] = SparseTensor(strided.int(), self._values(strided, self.channels[name]), stride=s)
        return logits, feats


# ---- set-up --------------------------------------------------------------------------------------
def _config(tiny_data, **distill: object) -> StudentConfig:
    cfg = build_config(StudentConfig, tiny_data.config, {})
    return cfg.model_copy(update={"distill": DistillConfig.model_validate(distill)})


def _fake_teacher(cfg: StudentConfig, net: nn.Module) -> LoadedModel:
    return LoadedModel(net=net, manifest=None, path=Path("fake-teacher"), model_cfg=cfg.model,  # type: ignore[arg-type]
                       voxel=cfg.voxel, device=torch.device("cpu"))


def _module(tiny_data, student: nn.Module, teacher: nn.Module | None, **distill: object) -> DistillModule:
    cfg = _config(tiny_data, **distill)
    loaded = None if teacher is None else _fake_teacher(cfg, teacher)
    return DistillModule(student, SegmentationLoss(cfg.loss, None), cfg, LABELS, loaded).train()


@pytest.fixture(scope="module")
def batch(tiny_data) -> Batch:
    """Two scans with hard-class voxels in their single view (so the hard weights matter)."""
    voxel = build_config(StudentConfig, tiny_data.config, {}).voxel
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], LABELS, voxel, ("fused", "single"), seed=0)
    b = collate_views([ds[len(ds) - 1], ds[len(ds) - 3]])
    hard = torch.isin(b.views["single"].voxel_labels, torch.as_tensor(LABELS.hard_train_ids))
    assert hard.any() and not hard.all()
    assert b.views["fused"].coords.shape[0] > b.views["single"].coords.shape[0]
    return b


def _channels(tiny_data) -> dict[str, int]:
    return feature_channels(build_config(StudentConfig, tiny_data.config, {}).model)


def _rows_by_coords(query: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Row of `table` with the same [b, x, y, z] as each `query` row: a plain dict, independent of
    the module's key packing and binary search."""
    where = {tuple(r): i for i, r in enumerate(table.tolist())}
    return torch.tensor([where[tuple(r)] for r in query.tolist()], dtype=torch.long)


# ---- teacher rows are the student's own voxels -----------------------------------------------------
EVERY_SCALE = {"logit_weight": 1.0, "feature_weight": 1.0, "feature_layers": list(FEATURE_NAMES)}


def test_teacher_rows_are_the_students_own_voxels_at_every_scale(tiny_data, batch: Batch) -> None:
    # Student and teacher compute the same function of the coordinates: matched row for row, every
    # logit and feature term is exactly 0 (square adapters start as the identity); a teacher row of
    # any other voxel makes it positive. Stride-1 student features come in their own row order.
    ch = _channels(tiny_data)
    module = _module(tiny_data, CoordNet(LABELS.num_classes, ch, shuffle=True), CoordNet(LABELS.num_classes, ch),
                     **EVERY_SCALE)
    _, terms = module(batch, 1.0)
    assert float(terms["kd_logit"]) == 0.0
    assert float(terms["kd_feature"]) == 0.0
    # The check has teeth: a teacher that encodes the neighbouring voxel (x + 1) is caught.
    shifted = CoordNet(LABELS.num_classes, ch, shift=(0, 1, 0, 0))
    _, off = _module(tiny_data, CoordNet(LABELS.num_classes, ch, shuffle=True), shifted, **EVERY_SCALE)(batch, 1.0)
    assert float(off["kd_logit"]) > 0.01 and float(off["kd_feature"]) > 0.01


def test_joint_mode_teaches_each_voxel_with_its_own_fused_branch_output(tiny_data, batch: Batch) -> None:
    # One net on both views: matched rows hold bitwise the same logits, so the logit term is 0.
    ch = _channels(tiny_data)
    module = _module(tiny_data, CoordNet(LABELS.num_classes, ch), None, mode="joint", logit_weight=1.0)
    _, terms = module(batch, 1.0)
    assert float(terms["kd_logit"]) == 0.0
    assert float(terms["ce_fused"]) > 0  # the fused branch ran (and is supervised)


def test_joint_mode_feature_terms_match_each_voxel_at_every_scale(tiny_data, batch: Batch) -> None:
    ch = _channels(tiny_data)
    module = _module(tiny_data, CoordNet(LABELS.num_classes, ch, shuffle=True), None, mode="joint", **EVERY_SCALE)
    _, terms = module(batch, 1.0)
    assert float(terms["kd_logit"]) == 0.0 and float(terms["kd_feature"]) == 0.0


def test_teacher_correct_distils_only_voxels_whose_teacher_argmax_is_the_label(tiny_data, batch: Batch) -> None:
    # The term equals logit_kd with the teacher-wrong (and unlabelled) voxels weighted 0; it differs
    # from the all-voxel term, so the mask is not a no-op on this batch.
    ch = _channels(tiny_data)
    student, teacher = CoordNet(LABELS.num_classes, ch, phase=0.4), CoordNet(LABELS.num_classes, ch)
    kd = {"logit_weight": 2.0, "hard_class_weight": 3.0}
    _, masked = _module(tiny_data, student, teacher, logit_voxels="teacher_correct", **kd)(batch, 1.0)
    _, everywhere = _module(tiny_data, student, teacher, logit_voxels="all", **kd)(batch, 1.0)

    single, fused = batch.views["single"], batch.views["fused"]
    with torch.no_grad():
        s_logits = student(SparseTensor(single.coords, single.feats))
        t_logits = teacher(SparseTensor(fused.coords, fused.feats))[_rows_by_coords(single.coords, fused.coords)]
    correct = t_logits.argmax(dim=1) == single.voxel_labels
    assert correct.any() and not correct.all()
    w = torch.where(torch.isin(single.voxel_labels, torch.as_tensor(LABELS.hard_train_ids)), 3.0, 1.0)
    expected = 2.0 * logit_kd(s_logits, t_logits, DistillConfig().logit.temperature, w * correct, None, "official")
    assert float(masked["kd_logit"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(masked["kd_logit"]) != pytest.approx(float(everywhere["kd_logit"]), rel=1e-3)


def test_single_view_teacher_sees_only_the_students_scan(tiny_data, batch: Batch) -> None:
    # teacher_view single (the control for what the fused input teaches): the frozen teacher runs
    # on the student's own voxels, and the logit term is logit_kd against those outputs.
    ch = _channels(tiny_data)
    seen: list[int] = []

    class Recording(CoordNet):
        def forward(self, x: SparseTensor, return_features: bool | Sequence[str] = False):  # type: ignore[override]
            seen.append(int(x.coords.shape[0]))
            return super().forward(x, return_features)

    student, teacher = CoordNet(LABELS.num_classes, ch, phase=0.4), Recording(LABELS.num_classes, ch)
    _, terms = _module(tiny_data, student, teacher, teacher_view="single", logit_weight=2.0)(batch, 1.0)
    single, fused = batch.views["single"], batch.views["fused"]
    assert seen == [single.coords.shape[0]] and fused.coords.shape[0] > single.coords.shape[0]
    with torch.no_grad():
        s_logits = student(SparseTensor(single.coords, single.feats))
        t_logits = teacher(SparseTensor(single.coords, single.feats))
    expected = 2.0 * logit_kd(s_logits, t_logits, DistillConfig().logit.temperature, torch.ones(len(s_logits)), None, "official")
    assert float(terms["kd_logit"]) == pytest.approx(float(expected), rel=1e-6)
    seen.clear()  # the default view: the same teacher gets the fused voxels
    _module(tiny_data, student, teacher, logit_weight=2.0)(batch, 1.0)
    assert seen == [fused.coords.shape[0]]


def test_single_view_control_loads_no_fused_rows_and_joint_mode_refuses_it() -> None:
    assert DistillConfig(teacher_view="single").views == ("single",)
    assert DistillConfig().views == DistillConfig(mode="joint").views == ("fused", "single")
    assert DistillConfig(logit_weight=0).views == ("single",)  # the baseline
    with pytest.raises(ValueError, match="teacher_view must be 'fused'"):
        DistillConfig(mode="joint", teacher_view="single")


# ---- configured temperature and weights reach the losses -------------------------------------------
VALUES = {
    "temperature": 2.5, "logit_weight": 3.0, "hard_class_weight": 4.0,
    "feature_weight": 0.7, "feature_layers": ["decoder", "up3", "down2"], "feature_hard_weight": 3.0,
    "affinity_weight": 0.4, "affinity_max_points_per_class": 64,
    "graph_weight": 0.3, "graph_k": 4, "graph_num_queries": 16, "graph_hidden": 8, "graph_layer": "decoder",
    "warmup_epochs": 2.0,
}  # fmt: skip


@pytest.mark.parametrize("reduction", ["official", "kl_t2"])
def test_terms_equal_the_loss_functions_on_hand_matched_rows(tiny_data, batch: Batch, reduction: str) -> None:
    # Student and teacher differ (another phase); nothing is left at its default. progress 1.0 of a
    # 2-epoch warm-up: every weight is halved.
    ch = _channels(tiny_data)
    torch.manual_seed(0)  # adapters and graph heads
    student = CoordNet(LABELS.num_classes, ch, phase=0.4, shuffle=True)
    teacher = CoordNet(LABELS.num_classes, ch)
    kd = VALUES | {"logit_reduction": reduction}
    module = _module(tiny_data, student, teacher, **kd)
    _, terms = module(batch, 1.0)
    scale = 0.5
    assert module.kd.logit.temperature == 2.5  # not the default (10/3)

    single, fused = batch.views["single"], batch.views["fused"]
    with torch.no_grad():
        s_logits, s_feats = student(SparseTensor(single.coords, single.feats), return_features=True)
        t_logits_all, t_feats = teacher(SparseTensor(fused.coords, fused.feats), return_features=True)
    t_logits = t_logits_all[_rows_by_coords(single.coords, fused.coords)]
    is_hard = torch.isin(single.voxel_labels, torch.as_tensor(LABELS.hard_train_ids))

    w_logit = torch.where(is_hard, 4.0, 1.0)
    expected_logit = 3.0 * scale * logit_kd(s_logits, t_logits, 2.5, w_logit, None, reduction)
    assert float(terms["kd_logit"]) == pytest.approx(float(expected_logit), rel=1e-6)
    # The temperature matters for this batch (a T = 1 term would be caught).
    assert float(logit_kd(s_logits, t_logits, 1.0, w_logit, None, reduction)) != pytest.approx(
        float(logit_kd(s_logits, t_logits, 2.5, w_logit, None, reduction)), rel=1e-3)

    per_layer = []
    for name in VALUES["feature_layers"]:  # type: ignore[union-attr]
        s_f, t_f = s_feats[name], t_feats[name]
        w = None
        if FEATURE_STRIDES[name] == 1:  # per-voxel hard weights of the student's own voxels
            w = torch.where(is_hard, 3.0, 1.0)[_rows_by_coords(s_f.coords, single.coords)]
        t_rows = t_f.feats[_rows_by_coords(s_f.coords, t_f.coords)]
        per_layer.append(feature_kd(s_f.feats, t_rows, w, adapter=module.terms["feature"].adapters[name]))
    expected_feature = 0.7 * scale * torch.stack(per_layer).mean()
    assert float(terms["kd_feature"]) == pytest.approx(float(expected_feature.detach()), rel=1e-6)

    thing_classes = [2, 3, 4, 5, 6, 7, 8]  # the hard classes; car (1), excluded by default, is not one
    assert list(LABELS.hard_train_ids) == thing_classes
    expected_affinity = 0.4 * scale * class_affinity_kd(
        s_logits, t_logits, single.voxel_labels, single.coords, thing_classes, max_points=64)
    assert float(expected_affinity) > 0
    assert float(terms["kd_affinity"]) == pytest.approx(float(expected_affinity), rel=1e-6)

    s_g = s_feats["decoder"]
    in_single = _rows_by_coords(s_g.coords, single.coords)
    expected_graph = 0.3 * scale * module.terms["graph"].head(
        s_g.feats, t_feats["decoder"].feats[_rows_by_coords(s_g.coords, t_feats["decoder"].coords)], s_g.coords,
        density=fused.voxel_count[_rows_by_coords(s_g.coords, fused.coords)],
        student_logits=s_logits[in_single], teacher_logits=t_logits[in_single])
    assert float(terms["kd_graph"]) == pytest.approx(float(expected_graph.detach()), rel=1e-6)


# ---- graph term: hand-computed reference -------------------------------------------------------------
def _edgeconv_reference(adapter: nn.Module, x: torch.Tensor, centre: int, neighbours: list[int]) -> torch.Tensor:
    """max over neighbours j of fc2(relu(fc1([x_j - x_i, x_i]))), one neighbour at a time."""
    w1, b1 = adapter.fc1.weight.detach().double(), adapter.fc1.bias.detach().double()
    w2, b2 = adapter.fc2.weight.detach().double(), adapter.fc2.bias.detach().double()
    outs = []
    for j in neighbours:
        edge = torch.cat([x[j] - x[centre], x[centre]])
        outs.append(w2 @ torch.relu(w1 @ edge + b1) + b2)
    return torch.stack(outs).max(dim=0).values


def test_graph_term_matches_a_hand_computed_reference() -> None:
    # Two samples of 5 voxels, 3 queries per sample, k = 3, distinct densities (no ties anywhere),
    # student and teacher of different widths (separate adapters).
    torch.manual_seed(0)
    kd = LocalGraphKD(3, 2, hidden=4, num_queries=3, k=3, score="density", score_temperature=0.7)
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 1, 1], [0, 2, 2, 2], [0, 7, 0, 5], [0, 3, 3, 0],
                           [1, 1, 2, 3], [1, 0, 0, 1], [1, 5, 5, 5], [1, 2, 6, 1], [1, 6, 1, 2]], dtype=torch.int32)
    density = torch.tensor([1, 6, 2, 9, 4, 7, 3, 12, 5, 2])
    g = torch.Generator().manual_seed(5)
    s = torch.randn(10, 3, generator=g)
    t = torch.randn(10, 2, generator=g)
    got = kd(s, t, coords, density=density)

    s64, t64 = s.double(), t.double()
    score = [math.log1p(float(d)) for d in density]
    queries: list[int] = []
    terms: list[float] = []
    for sample in (0, 1):
        members = [i for i in range(10) if int(coords[i, 0]) == sample]
        chosen = sorted(members, key=lambda i: -score[i])[:3]
        for q in chosen:
            dist = {j: float(((t64[j] - t64[q]) ** 2).sum()) for j in members}  # teacher feature space
            nbs = sorted(members, key=lambda j: dist[j])[:3]
            assert nbs[0] == q  # self included
            g_s = _edgeconv_reference(kd.student_adapter, s64, q, nbs)
            assert kd.teacher_adapter is not None
            g_t = _edgeconv_reference(kd.teacher_adapter, t64, q, nbs)
            queries.append(q)
            terms.append(float(((g_s - g_t) ** 2).mean()))
    exps = [math.exp(score[q] / 0.7) for q in queries]
    weights = [e / sum(exps) for e in exps]
    reference = sum(w * v for w, v in zip(weights, terms))
    assert float(got.detach()) == pytest.approx(reference, rel=1e-5)
    # Not a degenerate case: uniform weights would give another value.
    assert sum(terms) / len(terms) != pytest.approx(reference, rel=1e-3)


def test_graph_adapter_uses_the_centre_feature() -> None:
    # EdgeConv edge features [x_j - x_i, x_i]: with a single neighbour (the centre itself) the
    # output is fc2(relu(fc1([0, x_i]))), which depends on x_i only through the centre half of fc1.
    torch.manual_seed(1)
    kd = LocalGraphKD(3, 3, hidden=4, num_queries=2, k=1)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = kd.student_adapter(x, torch.tensor([0, 1]), torch.tensor([[0], [1]]), torch.ones(2, 1, dtype=torch.bool))
    ref = torch.stack([_edgeconv_reference(kd.student_adapter, x.double(), i, [i]) for i in (0, 1)]).float()
    assert torch.allclose(out, ref, atol=1e-6)
    assert not torch.allclose(out[0], out[1])


# ---- who teaches: every mode/teacher rule in one validator ---------------------------------------
def test_teacher_choice_holds_every_mode_and_teacher_rule(tmp_path) -> None:
    from m2s.distill.config import KdChoice, TeacherChoice
    from m2s.errors import ConfigError

    art = tmp_path / "teacher"
    frozen, joint, off = DistillConfig(), DistillConfig(mode="joint"), DistillConfig.baseline()
    assert TeacherChoice.parse(frozen, art).teacher_artifact == art
    assert TeacherChoice.parse(joint, None).teacher_artifact is None
    assert TeacherChoice.parse(off, None).config.is_baseline
    # --kd none: the baseline, whatever the config says; a given teacher is not used
    none = TeacherChoice.parse(joint, art, KdChoice.none)
    assert none.config == DistillConfig.baseline() and none.teacher_artifact is None
    with pytest.raises(ConfigError, match="needs --teacher"):
        TeacherChoice.parse(frozen, None)
    with pytest.raises(ConfigError, match="joint mode .* drop --teacher"):
        TeacherChoice.parse(joint, art)
    with pytest.raises(ConfigError, match="use --kd none"):
        TeacherChoice.parse(off, art)
    with pytest.raises(ConfigError, match="--kd"):
        TeacherChoice.parse(frozen, art, "sometimes")


def test_the_teacher_is_picked_once_from_the_config(tiny_data) -> None:
    from m2s.distill.teachers import FrozenTeacher, JointTeacher

    ch = _channels(tiny_data)
    student = CoordNet(LABELS.num_classes, ch)
    assert _module(tiny_data, student, None, logit_weight=0.0).teacher is None
    assert isinstance(_module(tiny_data, student, None, mode="joint").teacher, JointTeacher)
    frozen = _module(tiny_data, student, CoordNet(LABELS.num_classes, ch), logit_weight=1.0).teacher
    assert isinstance(frozen, FrozenTeacher) and not frozen.net.training


def test_a_checkpoint_from_before_the_term_modules_still_loads(tiny_data) -> None:
    # --resume of a run started before the terms were modules: its adapters/graph parameters
    # were saved as `adapters.*` and `graph.*`.
    ch = _channels(tiny_data)
    kd = {"logit_weight": 1.0, "feature_weight": 1.0, "feature_layers": ["decoder"], "graph_weight": 0.5, "graph_hidden": 8}
    torch.manual_seed(1)
    saved = _module(tiny_data, CoordNet(LABELS.num_classes, ch), CoordNet(LABELS.num_classes, ch), **kd).state_dict()
    old = {k.replace("terms.feature.adapters.", "adapters.").replace("terms.graph.head.", "graph."): v for k, v in saved.items()}
    assert any(k.startswith("adapters.") for k in old) and any(k.startswith("graph.") for k in old)
    torch.manual_seed(2)
    fresh = _module(tiny_data, CoordNet(LABELS.num_classes, ch), CoordNet(LABELS.num_classes, ch), **kd)
    fresh.load_state_dict(old)
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
