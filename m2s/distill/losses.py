"""Distillation losses on already-matched voxels (row i of a student tensor and row i of the
teacher tensor are the same voxel; see :func:`m2s.distill.correspondence.match_voxels`).

Shared conventions:

* every loss returns a float32 scalar and detaches the teacher tensors (no gradient reaches the
  frozen teacher);
* values do not depend on the row order: sums are permutation-invariant, and wherever voxels
  are *selected* (subsampling, top-N) the choice is made by coordinates, never by position;
* a loss with nothing to compare (no voxels, no instances) returns an exact 0 that is still
  attached to the student's graph, so ``backward()`` works unconditionally;
* per-voxel weights (``weights`` arguments) are non-negative; a voxel of weight 0 is ignored
  and weighted means divide by the total weight of the voxels that take part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2s.distill.correspondence import canonical_order, hashed_order
from m2s.errors import ConfigError

_EPS = 1e-12
PairLoss = Literal["l1", "mse"]
GraphScore = Literal["density", "disagreement"]


# ---- helpers ---------------------------------------------------------------------------------
def _zero(like: Tensor) -> Tensor:
    """Exact float32 0 attached to `like`'s graph (an empty sum), so backward() always works."""
    return like[:0].float().sum()


def _check_rows(name: str, **tensors: Tensor | None) -> int:
    rows = {k: v.shape[0] for k, v in tensors.items() if v is not None}
    if len(set(rows.values())) > 1:
        raise ValueError(f"{name}: inputs must have the same number of rows (voxels), got {rows}")
    return next(iter(rows.values()))


def _voxel_weights_or_ones(weights: Tensor | None, n: int, device: torch.device) -> Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float32, device=device)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    return weights.detach().float()


def hard_mask(class_id: Tensor, hard_train_ids: Tensor | Sequence[int]) -> Tensor:
    """(V,) bool: the voxel's train id is one of the hard classes."""
    ids = torch.as_tensor(hard_train_ids, dtype=torch.long, device=class_id.device)
    return torch.isin(class_id.long(), ids)


def voxel_weights(is_hard: Tensor, hard_class_weight: float, *, hard_only: bool = False) -> Tensor:
    """Per-voxel float32 weights ``1 + (hard_class_weight - 1) * is_hard``; `hard_only` zeroes the rest."""
    if hard_class_weight < 0:
        raise ValueError(f"hard_class_weight must be >= 0, got {hard_class_weight}")
    h = is_hard.to(torch.float32)
    w = 1.0 + (hard_class_weight - 1.0) * h
    return w * h if hard_only else w


# ---- logit KD --------------------------------------------------------------------------------
LogitReduction = Literal["official", "kl_t2"]
#: Per-voxel threshold of each reduction when none is configured: the official code drops
#: voxels whose per-voxel term is <= 0.01; the KL form only drops voxels already matched.
DEFAULT_LOGIT_MIN_TERM: dict[str, float] = {"official": 0.01, "kl_t2": 1e-4}
_OFFICIAL_EPS = 1e-6


def logit_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    weights: Tensor | None = None,
    min_term: float | None = None,
    reduction: LogitReduction = "official",
) -> Tensor:
    """Logit distillation on matched voxels, averaged over the voxels that still disagree.

    ``p = softmax(logits / T)`` for both nets (teacher detached). Per voxel:

    * ``"official"`` (the M2SKD code): ``mean_c p_t * |log((p_t + 1e-6) / (p_s + 1e-6))|`` - a
      mean over the classes, no T^2 factor;
    * ``"kl_t2"`` (Hinton): ``sum_c p_t * log(p_t / p_s)`` (the KL), and the result is scaled
      by T^2 so gradient magnitudes stay comparable across temperatures.

    Voxels whose per-voxel term is ``<= min_term`` (None: the reduction's default,
    :data:`DEFAULT_LOGIT_MIN_TERM`) or whose weight is 0 are dropped; the result is the
    weighted mean ``sum_i w_i term_i / sum_i w_i`` over the kept voxels. Exactly 0 when
    nothing is kept, in particular when the student equals the teacher.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in DEFAULT_LOGIT_MIN_TERM:
        raise ConfigError(f"unknown logit reduction {reduction!r}; expected one of {sorted(DEFAULT_LOGIT_MIN_TERM)}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"logit_kd: expected two (V, C) tensors of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if min_term is None:
        min_term = DEFAULT_LOGIT_MIN_TERM[reduction]
    n = student_logits.shape[0]
    if reduction == "official":
        ps = F.softmax(student_logits.float() / temperature, dim=1)
        pt = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
        ratio = torch.log((pt + _OFFICIAL_EPS) / (ps + _OFFICIAL_EPS))
        term = (pt * ratio.abs()).mean(dim=1)
        scale = 1.0
    else:
        log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_pt = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
        term = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
        scale = temperature**2
    w = _voxel_weights_or_ones(weights, n, student_logits.device)
    w = torch.where(term.detach() > min_term, w, torch.zeros_like(w))
    num = torch.where(w > 0, w * term, torch.zeros_like(term)).sum()
    return scale * num / w.sum().clamp_min(_EPS)


# ---- feature KD ------------------------------------------------------------------------------
class FeatureAdapter(nn.Module):
    """Learnable 1x1 (per-voxel Linear) map from student to teacher channels.

    Kept outside the student network so the exported student carries no distillation-only
    weights. A square adapter starts as the identity (plain feature MSE at step 0);
    ``identity_if_equal=True`` makes a square adapter a parameter-free ``nn.Identity``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, identity_if_equal: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(f"adapter channels must be >= 1, got {in_channels} -> {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.proj: nn.Module
        if identity_if_equal and in_channels == out_channels:
            self.proj = nn.Identity()
        else:
            lin = nn.Linear(in_channels, out_channels)
            if in_channels == out_channels:
                with torch.no_grad():
                    lin.weight.copy_(torch.eye(in_channels))
                    lin.bias.zero_()
            self.proj = lin

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def build_feature_adapters(
    layers: Sequence[str],
    student_channels: Mapping[str, int],
    teacher_channels: Mapping[str, int],
    *,
    identity_if_equal: bool = False,
) -> nn.ModuleDict:
    """One :class:`FeatureAdapter` per named layer, keyed by layer name."""
    missing = [n for n in layers if n not in student_channels or n not in teacher_channels]
    if missing:
        raise ConfigError(
            f"feature layer(s) {missing} unknown; student has {sorted(student_channels)}, "
            f"teacher has {sorted(teacher_channels)}"
        )
    return nn.ModuleDict(
        {
            n: FeatureAdapter(student_channels[n], teacher_channels[n], identity_if_equal=identity_if_equal)
            for n in layers
        }
    )


def feature_kd(
    student_feats: Tensor,
    teacher_feats: Tensor,
    weights: Tensor | None = None,
    *,
    adapter: nn.Module | None = None,
) -> Tensor:
    """Weighted mean over voxels of the channel-mean squared error between
    ``adapter(student_feats)`` and the teacher features: ``sum_i w_i mse_i / sum_i w_i``."""
    s = adapter(student_feats) if adapter is not None else student_feats
    if s.shape != teacher_feats.shape or s.dim() != 2:
        raise ConfigError(
            f"feature_kd: (adapted) student features {tuple(s.shape)} do not match teacher "
            f"features {tuple(teacher_feats.shape)}; configure a FeatureAdapter"
        )
    per = (s.float() - teacher_feats.detach().float()).pow(2).mean(dim=1)
    w = _voxel_weights_or_ones(weights, s.shape[0], s.device)
    return (w * per).sum() / w.sum().clamp_min(_EPS)


# ---- instance-aware affinity KD --------------------------------------------------------------
def _pair_loss(diff: Tensor, loss: PairLoss) -> Tensor:
    if loss == "l1":
        return diff.abs()
    if loss == "mse":
        return diff.pow(2)
    raise ConfigError(f"unknown affinity loss {loss!r}; expected 'l1' or 'mse'")


def _cosine_matrix(x: Tensor) -> Tensor:
    """Batched cosine similarities of (..., N, C) rows; zero (padding) rows give 0."""
    u = F.normalize(x, dim=-1, eps=1e-8)
    return u @ u.transpose(-1, -2)


def _group_affinity_errors(
    s: Tensor, t: Tensor, gid: Tensor, counts: Tensor, coords: Tensor, max_points: int, loss: PairLoss, salt: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per group: summed pair error of the student vs teacher cosine-similarity matrices over its
    off-diagonal pairs, the number of those pairs and the number of voxels taken.

    Groups larger than `max_points` are subsampled to `max_points` voxels ranked by
    (hash(coords), coords), so the choice is reproducible, spatially unbiased and independent
    of row order. Memory is O(num_groups * max_points^2).
    """
    num_groups, m = counts.shape[0], gid.shape[0]
    order = hashed_order(coords, salt)
    order = order[torch.sort(gid[order], stable=True).indices]
    g_sorted = gid[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m, device=s.device) - starts[g_sorted]
    pad = min(max_points, int(counts.max()))
    take = rank < pad
    rows, g_idx, r_idx = order[take], g_sorted[take], rank[take]

    def padded(x: Tensor) -> Tensor:
        out = x.new_zeros(num_groups, pad, x.shape[1])
        out[g_idx, r_idx] = x[rows]
        return out

    present = torch.zeros(num_groups, pad, dtype=torch.bool, device=s.device)
    present[g_idx, r_idx] = True
    eye = torch.eye(pad, dtype=torch.bool, device=s.device)
    pairs = present.unsqueeze(2) & present.unsqueeze(1) & ~eye
    sim_s = _cosine_matrix(padded(s))
    with torch.no_grad():
        sim_t = _cosine_matrix(padded(t))
    err = torch.where(pairs, _pair_loss(sim_s - sim_t, loss), torch.zeros_like(sim_s))
    return err.sum(dim=(1, 2)), pairs.sum(dim=(1, 2)), present.sum(dim=1)


def _salt(generator: torch.Generator | None) -> int:
    return 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _check_affinity_inputs(
    name: str, student: Tensor, teacher: Tensor, max_points: int, loss: PairLoss, **rows: Tensor
) -> int:
    n = _check_rows(name, student=student, teacher=teacher, **rows)
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")
    if max_points < 2:
        raise ConfigError(f"max_points must be >= 2, got {max_points}")
    _pair_loss(student.new_zeros(()), loss)  # validate the name early
    return n


def instance_affinity_kd(
    student: Tensor,
    teacher: Tensor,
    instance_key: Tensor,
    class_id: Tensor,
    coords: Tensor,
    *,
    max_points: int = 128,
    cross_instance: bool = True,
    loss: PairLoss = "l1",
    exclude_classes: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Match the student's within-instance (and same-class cross-instance) cosine affinities
    to the teacher's.

    Inputs are matched rows: features or logits (V, C) for both nets, ``instance_key`` (V,)
    int64 (0 = not an instance), ``class_id`` (V,) train ids and ``coords`` (V, 4). An
    instance is a group of voxels sharing (batch index, instance_key, class_id), so keys need
    not be unique across the batch. Voxels of ``exclude_classes`` are ignored.

    * intra term: per instance, the (P, P) cosine-similarity matrix of its voxels in the student
      vs the teacher, L1 or squared error averaged over the off-diagonal pairs, then averaged
      over instances with at least 2 voxels (each instance counts equally, so small far-away
      objects are not drowned by large near ones). Instances larger than ``max_points`` are
      subsampled by coordinate hash (salted by one draw from `generator` when given).
    * cross term (``cross_instance``): cosine similarities between the instance-mean embeddings
      (over all the instance's voxels) of every pair of distinct instances of the same class in
      the batch, student vs teacher, averaged over those pairs; added to the intra term. This
      keeps the relation between instances of one class that the per-class affinity of
      :func:`class_affinity_kd` captures, at O(num_instances^2) cost.
    """
    n = _check_affinity_inputs(
        "instance_affinity_kd",
        student,
        teacher,
        max_points,
        loss,
        instance_key=instance_key,
        class_id=class_id,
        coords=coords,
    )
    keep = instance_key.long() > 0
    if exclude_classes:
        keep &= ~hard_mask(class_id, list(exclude_classes))
    sel = keep.nonzero().squeeze(1)
    if n == 0 or sel.numel() == 0:
        return _zero(student)

    s = student[sel].float()
    t = teacher[sel].detach().float()
    c = coords[sel].long()
    group_rows = torch.stack([c[:, 0], instance_key[sel].long(), class_id[sel].long()], dim=1)
    # unique() sorts the groups, so group ids are canonical whatever the row order.
    groups, gid, counts = torch.unique(group_rows, dim=0, return_inverse=True, return_counts=True)
    num_groups = groups.shape[0]
    err, n_pairs, _ = _group_affinity_errors(s, t, gid, counts, c, max_points, loss, _salt(generator))
    per_instance = err / n_pairs.clamp_min(1)
    has_pairs = (n_pairs > 0).float()
    total = (per_instance * has_pairs).sum() / has_pairs.sum().clamp_min(1.0)

    if cross_instance and num_groups > 1:
        denom = counts.unsqueeze(1).float()
        mean_s = torch.zeros(num_groups, s.shape[1], device=s.device).index_add_(0, gid, s) / denom
        with torch.no_grad():
            mean_t = torch.zeros(num_groups, t.shape[1], device=t.device).index_add_(0, gid, t) / denom
            cross_t = _cosine_matrix(mean_t)
        cls = groups[:, 2]
        not_self = ~torch.eye(num_groups, dtype=torch.bool, device=s.device)
        same = (cls.unsqueeze(1) == cls.unsqueeze(0)) & not_self
        cross_err = _pair_loss(_cosine_matrix(mean_s) - cross_t, loss)
        cross_err = torch.where(same, cross_err, torch.zeros_like(cross_err))
        total = total + cross_err.sum() / same.sum().clamp_min(1)
    return total


def class_affinity_kd(
    student: Tensor,
    teacher: Tensor,
    class_id: Tensor,
    coords: Tensor,
    classes: Sequence[int],
    *,
    max_points: int = 1024,
    loss: PairLoss = "l1",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The official M2SKD affinity term: for each class of `classes` present, all voxels of that
    class in the batch (every sample together), the (P, P) cosine-similarity matrix of their
    rows in the student vs the teacher, the L1 (or squared) difference averaged over the whole
    matrix (diagonal included, as ``torch.mean`` over it does), summed over the classes.

    Classes with fewer than 2 voxels contribute nothing. A class with more than `max_points`
    voxels is subsampled by coordinate hash (the original code has no cap; its dense P x P
    matrix is what the cap bounds).
    """
    n = _check_affinity_inputs(
        "class_affinity_kd", student, teacher, max_points, loss, class_id=class_id, coords=coords
    )
    sel = hard_mask(class_id, list(classes)).nonzero().squeeze(1) if len(classes) else class_id.new_zeros(0)
    if n == 0 or sel.numel() == 0:
        return _zero(student)
    s = student[sel].float()
    t = teacher[sel].detach().float()
    c = coords[sel].long()
    _, gid, counts = torch.unique(class_id[sel].long(), return_inverse=True, return_counts=True)
    err, n_pairs, taken = _group_affinity_errors(s, t, gid, counts, c, max_points, loss, _salt(generator))
    per_class = err / taken.float().pow(2)
    return (per_class * (n_pairs > 0).float()).sum()


# ---- local graph KD (PointDistiller) ---------------------------------------------------------
class GraphAdapter(nn.Module):
    """EdgeConv-style adapter: ``max_j fc2(relu(fc1([x_j - x_i, x_i])))`` over the k neighbours j
    of centre i (DGCNN edge features: local offset plus the centre's own feature)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.fc1 = nn.Linear(2 * in_channels, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, feats: Tensor, centres: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """feats (V, C), centres (Q,) row ids, neighbours (Q, k) row ids, valid (Q, k) -> (Q, H)."""
        c = self.in_channels
        w_nb, w_ct = self.fc1.weight[:, :c], self.fc1.weight[:, c:]
        # fc1([n - x, x]) = W_nb n + (W_ct - W_nb) x: avoids materialising the (Q, k, 2C) concat.
        centre_term = F.linear(feats[centres], w_ct - w_nb, self.fc1.bias)
        h = F.linear(feats[neighbours], w_nb) + centre_term.unsqueeze(1)
        h = self.fc2(F.relu(h))
        return h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)


class LocalGraphKD(nn.Module):
    """PointDistiller-style local-structure distillation (Zhang, Dong et al., 2022).

    Per sample, the ``num_queries`` most important student voxels are chosen by a score -
    ``"density"``: log(1 + teacher points in the voxel), or ``"disagreement"``: per-voxel
    KL(teacher || student) of the logits (1 - cosine of the features when no logits are given
    and the widths match) - with ties broken by a coordinate hash. Each query is grouped with
    its k nearest neighbours in the TEACHER's feature space among the voxels of the same
    sample (self included; a sample with fewer than k voxels uses all of them). Both nets'
    features on that graph go through their own :class:`GraphAdapter`, and the student's
    output is matched to the teacher's by an MSE weighted with ``softmax(score / score_temperature)``
    over all selected queries (weights sum to 1).

    The teacher adapter is frozen by default: training both adapters on their squared
    difference could collapse them to a constant; a fixed random EdgeConv embedding of the
    teacher's local graph is a stable target. ``share_adapters`` (equal widths) uses one adapter
    for both, with the teacher branch detached. kNN runs in query chunks so one distance block
    holds at most ``max_chunk_elements`` floats.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        hidden: int = 64,
        num_queries: int = 1024,
        k: int = 16,
        score: GraphScore = "density",
        score_temperature: float = 1.0,
        share_adapters: bool = False,
        train_teacher_adapter: bool = False,
        max_chunk_elements: int = 1 << 24,
    ) -> None:
        super().__init__()
        if num_queries < 1 or k < 1 or hidden < 1:
            raise ConfigError(f"num_queries, k and hidden must be >= 1, got {num_queries}, {k}, {hidden}")
        if score not in ("density", "disagreement"):
            raise ConfigError(f"unknown graph score {score!r}; expected 'density' or 'disagreement'")
        if score_temperature <= 0:
            raise ConfigError(f"score_temperature must be > 0, got {score_temperature}")
        if share_adapters and student_channels != teacher_channels:
            raise ConfigError(
                f"share_adapters needs equal widths, got student {student_channels}, teacher {teacher_channels}"
            )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.num_queries = num_queries
        self.k = k
        self.score = score
        self.score_temperature = score_temperature
        self.share_adapters = share_adapters
        self.train_teacher_adapter = train_teacher_adapter and not share_adapters
        self.max_chunk_elements = max(1, max_chunk_elements)
        self.student_adapter = GraphAdapter(student_channels, hidden)
        self.teacher_adapter: GraphAdapter | None = None
        if not share_adapters:
            self.teacher_adapter = GraphAdapter(teacher_channels, hidden)
            self.teacher_adapter.requires_grad_(self.train_teacher_adapter)

    # -- pieces --------------------------------------------------------------------------------
    def _scores(
        self, s: Tensor, t: Tensor, density: Tensor | None, s_logits: Tensor | None, t_logits: Tensor | None
    ) -> Tensor:
        with torch.no_grad():
            if self.score == "density":
                if density is None:
                    raise ConfigError("graph score 'density' needs the per-voxel teacher point counts")
                return torch.log1p(density.float().clamp_min(0))
            if s_logits is not None and t_logits is not None:
                log_ps = F.log_softmax(s_logits.float(), dim=1)
                log_pt = F.log_softmax(t_logits.float(), dim=1)
                return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
            if s.shape[1] == t.shape[1]:
                return 1.0 - F.cosine_similarity(s.float(), t.float(), dim=1, eps=1e-8)
            raise ConfigError("graph score 'disagreement' needs logits when feature widths differ")

    def _select(self, score: Tensor, coords: Tensor, batch: Tensor) -> Tensor:
        """Rows of the top-`num_queries` voxels of each sample by (score desc, hash, key)."""
        order = hashed_order(coords)
        order = order[torch.sort(score[order], descending=True, stable=True).indices]
        order = order[torch.sort(batch[order], stable=True).indices]
        _, counts = torch.unique_consecutive(batch[order], return_counts=True)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.arange(order.numel(), device=order.device) - starts
        return order[rank < self.num_queries]

    @torch.no_grad()
    def knn(self, t: Tensor, batch: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, k') neighbour rows in teacher feature space within each query's sample, and their
        validity; k' = min(k, largest sample), slots past a smaller sample's size are invalid.

        Rows are in coordinate order, so each sample is one contiguous slice: a query is only
        compared with its own sample's voxels. Loops run over samples (a handful) and query
        chunks (memory bound), never over voxels.
        """
        sample_ids, counts = torch.unique_consecutive(batch, return_counts=True)
        ends = torch.cumsum(counts, 0)
        k_out = min(self.k, int(counts.max()))
        slot = torch.searchsorted(sample_ids, batch[queries])
        # Invalid slots point at the centre itself; they are masked out before the max anyway.
        idx = queries.unsqueeze(1).repeat(1, k_out)
        valid = torch.zeros(queries.numel(), k_out, dtype=torch.bool, device=t.device)
        t = t.float()
        for j, (hi, n) in enumerate(zip(ends.tolist(), counts.tolist(), strict=True)):
            rows = (slot == j).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            lo, k = hi - n, min(self.k, n)
            candidates = t[lo:hi]
            chunk = max(1, self.max_chunk_elements // n)
            for start in range(0, rows.numel(), chunk):
                r = rows[start : start + chunk]
                d = torch.cdist(t[queries[r]], candidates)
                idx[r, :k] = d.topk(k, dim=1, largest=False, sorted=True).indices + lo
                valid[r, :k] = True
        return idx, valid

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        student_feats: Tensor,
        teacher_feats: Tensor,
        coords: Tensor,
        *,
        density: Tensor | None = None,
        student_logits: Tensor | None = None,
        teacher_logits: Tensor | None = None,
    ) -> Tensor:
        """Matched rows: student (V, Cs), teacher (V, Ct), coords (V, 4); `density` (V,) for the
        density score, logits (V, K) for the disagreement score. Returns a scalar."""
        n = _check_rows(
            "LocalGraphKD",
            student_feats=student_feats,
            teacher_feats=teacher_feats,
            coords=coords,
            density=density,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
        )
        if student_feats.shape[1] != self.student_channels or teacher_feats.shape[1] != self.teacher_channels:
            raise ConfigError(
                f"LocalGraphKD built for {self.student_channels}/{self.teacher_channels} channels, "
                f"got {student_feats.shape[1]}/{teacher_feats.shape[1]}"
            )
        if n == 0:
            return _zero(student_feats)
        # Work in coordinate order: selection, kNN ties and every reduction then see identical
        # inputs whatever order the rows came in.
        perm = canonical_order(coords)
        ordered, batch = coords[perm], coords[perm, 0].long()
        s = student_feats[perm].float()
        t = teacher_feats[perm].detach().float()
        score = self._scores(
            s,
            t,
            None if density is None else density[perm],
            None if student_logits is None else student_logits[perm],
            None if teacher_logits is None else teacher_logits[perm].detach(),
        )
        queries = self._select(score, ordered, batch)
        neighbours, valid = self.knn(t, batch, queries)

        g_s = self.student_adapter(s, queries, neighbours, valid)
        teacher_adapter = self.teacher_adapter if self.teacher_adapter is not None else self.student_adapter
        with torch.set_grad_enabled(self.train_teacher_adapter and torch.is_grad_enabled()):
            g_t = teacher_adapter(t, queries, neighbours, valid)
        if not self.train_teacher_adapter:
            g_t = g_t.detach()
        w = torch.softmax(score[queries] / self.score_temperature, dim=0)
        return (w * (g_s - g_t).pow(2).mean(dim=1)).sum()
