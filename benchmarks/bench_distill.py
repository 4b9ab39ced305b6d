"""Benchmark: one distillation training step vs one baseline student step, side by side.

    .venv/bin/python benchmarks/bench_distill.py --beams 64 --columns 1024 --voxel-size 0.1 \
        --size 18 --teacher-size 18 --repeats 7 --json runs/bench_distill.json

Generates a synthetic sequence (`m2s.synth`), fuses it (window 4), and builds a randomly
initialised student and teacher (timing needs no training). The teacher is frozen exactly as
:class:`m2s.distill.task.DistillModule` freezes it (eval mode, ``requires_grad_(False)``).

Configurations (``--configs``, comma-separated):

* ``baseline``        SupervisedModule on the `single` view (what ``--kd none`` trains);
* ``logit+affinity``  DistillModule with the paper's terms (logit KD + instance affinity);
* ``all``             logit, feature KD on the decoder, affinity, local graph KD (default
                      num_queries / k);
* any single term name (``logit``, ``affinity``, ``feature``, ``graph``) to isolate one cost.

Every configuration starts from the same student weights and owns its optimiser. One timed
step is what the training engine does per batch: zero_grad, forward (teacher on the fused
view + student on the single view + losses), backward, gradient clipping, AdamW step. In each
repeat the configurations run one after another on the same batch (the order rotates), so
load noise hits all alike; the median over repeats is reported together with the ratio to
the baseline's median and the share of the step spent in the teacher forward (timed inside
the step by a wrapping :class:`m2s.distill.teachers.Teacher`). Peak RSS is the process high-water mark
after each configuration's warm-up (configurations warm up in the order given, so the growth
between rows is what that configuration adds); on CUDA the per-step peak allocated memory is
reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2s.artifacts import new_manifest  # noqa: E402
from m2s.distill.config import DistillConfig  # noqa: E402
from m2s.distill.correspondence import BatchCorrespondence  # noqa: E402
from m2s.distill.task import DistillModule, StudentConfig  # noqa: E402
from m2s.distill.teachers import Teacher, TeacherOutput  # noqa: E402
from m2s.fuse import FuseConfig, fuse_dataset, open_fused_cache  # noqa: E402
from m2s.inference import LoadedModel  # noqa: E402
from m2s.labels import load_label_manifest  # noqa: E402
from m2s.models import ModelConfig, build_model  # noqa: E402
from m2s.synth import SynthConfig, generate_dataset  # noqa: E402
from m2s.train.config import VoxelConfig  # noqa: E402
from m2s.train.dataset import Batch, ScanDataset, ViewBatch, collate_views  # noqa: E402
from m2s.train.losses import SegmentationLoss  # noqa: E402
from m2s.train.run import SupervisedModule  # noqa: E402

_OFF = {"logit_weight": 0.0, "feature_weight": 0.0, "affinity_weight": 0.0, "graph_weight": 0.0}
# Named KD configurations; weights other than 0 keep the DistillConfig defaults where set there.
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": dict(_OFF),
    "logit+affinity": _OFF | {"logit_weight": 5.0, "affinity_weight": 1.0},
    "all": _OFF | {"logit_weight": 5.0, "feature_weight": 1.0, "feature_layers": ["decoder"],
                   "affinity_weight": 1.0, "graph_weight": 1.0},
    "logit": _OFF | {"logit_weight": 5.0},
    "affinity": _OFF | {"affinity_weight": 1.0},
    "feature": _OFF | {"feature_weight": 1.0, "feature_layers": ["decoder"]},
    "graph": _OFF | {"graph_weight": 1.0},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---- data --------------------------------------------------------------------------------
def make_batches(args: argparse.Namespace, work: Path, voxel: VoxelConfig) -> tuple[list[Batch], dict[str, Any]]:
    """Generate + fuse a sequence and collate `--batches` distinct (fused, single) batches."""
    labels = load_label_manifest()
    root, cache_dir = work / "data", work / "fused"
    t0 = time.perf_counter()
    synth = SynthConfig(sequences=["00"], test_sequences=[], scans=args.scans, beams=args.beams,
                        columns=args.columns, seed=args.seed)
    generate_dataset(root, synth, workers=os.cpu_count() or 1)
    t1 = time.perf_counter()
    fuse_dataset(root, cache_dir, ["00"], FuseConfig(window=4), labels, workers=1)
    t2 = time.perf_counter()
    cache = open_fused_cache(cache_dir)
    ds = ScanDataset([cache], labels, voxel, ("fused", "single"), augment=None, seed=args.seed)
    # Scans from the middle of the sequence have neighbours on both sides: fullest fused views.
    n_samples = args.batches * args.batch_size
    mid = max(0, (len(ds) - n_samples) // 2)
    idx = [(mid + i) % len(ds) for i in range(n_samples)]
    batches = [collate_views([ds[i] for i in idx[b * args.batch_size:(b + 1) * args.batch_size]])
               for b in range(args.batches)]
    info = {
        "generate_s": t1 - t0,
        "fuse_s": t2 - t1,
        "points_single": statistics.mean(sum(b.views["single"].points_per_sample) for b in batches),
        "points_fused": statistics.mean(sum(b.views["fused"].points_per_sample) for b in batches),
        "voxels_single": statistics.mean(b.views["single"].coords.shape[0] for b in batches),
        "voxels_fused": statistics.mean(b.views["fused"].coords.shape[0] for b in batches),
    }
    return batches, info


# ---- modules -----------------------------------------------------------------------------
class TimedTeacher(Teacher):
    """A `Teacher` that times the one it wraps: the teacher forward inside the real step."""

    def __init__(self, inner: Teacher, runner: "Runner") -> None:
        self.inner = inner
        self.runner = runner

    def channels(self) -> dict[str, int]:
        return self.inner.channels()

    def __call__(self, batch: Batch, features: Sequence[str]) -> TeacherOutput:
        _sync(self.runner.device)
        t = time.perf_counter()
        out = self.inner(batch, features)
        _sync(self.runner.device)
        self.runner._teacher_t += time.perf_counter() - t
        return out

    def own_losses(self, out: TeacherOutput, corr: BatchCorrespondence, single: ViewBatch) -> dict[str, torch.Tensor]:
        return self.inner.own_losses(out, corr, single)

    def train_mode(self, mode: bool) -> None:
        self.inner.train_mode(mode)


class Runner:
    """One configuration: its module, optimiser and the per-step measurements."""

    def __init__(self, name: str, module: torch.nn.Module, device: torch.device) -> None:
        self.name = name
        self.module = module.to(device)
        self.module.train()
        params = [p for p in self.module.parameters() if p.requires_grad]
        # AdamW as the engine builds it (OptimConfig defaults: lr 2e-3, weight decay 1e-4).
        self.opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
        self.device = device
        self.step_s: list[float] = []
        self.forward_s: list[float] = []
        self.teacher_s: list[float] = []
        self.cuda_peak_mib: list[float] = []
        self._teacher_t = 0.0
        if isinstance(module, DistillModule) and module.teacher is not None:
            module.teacher = TimedTeacher(module.teacher, self)

    def step(self, batch: Batch, record: bool) -> float:
        """One engine-equivalent optimiser step; returns the loss."""
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        self._teacher_t = 0.0
        _sync(dev)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.module(batch, 1.0)
        _sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 10.0)
        self.opt.step()
        _sync(dev)
        t2 = time.perf_counter()
        if record:
            self.step_s.append(t2 - t0)
            self.forward_s.append(t1 - t0)
            self.teacher_s.append(self._teacher_t)
            if dev.type == "cuda":
                self.cuda_peak_mib.append(torch.cuda.max_memory_allocated(dev) / 2**20)
        return float(loss.detach())


def build_runners(args: argparse.Namespace, names: list[str], voxel: VoxelConfig, device: torch.device) -> list[Runner]:
    labels = load_label_manifest()
    s_cfg = ModelConfig(size=args.size, width=args.width, num_classes=labels.num_classes)
    t_cfg = ModelConfig(size=args.teacher_size, width=args.teacher_width, num_classes=labels.num_classes)
    torch.manual_seed(args.seed)
    student_state = build_model(s_cfg, args.backend).state_dict()
    teacher_net = build_model(t_cfg, args.backend).to(device)
    # What load_model_artifact would return, minus the weights file: only net/model_cfg are used.
    teacher = LoadedModel(
        net=teacher_net,
        manifest=new_manifest("model", {"bench": "random teacher"}, []),
        path=Path("random-teacher"),
        model_cfg=t_cfg,
        voxel=voxel,
        device=device,
    )
    runners = []
    for name in names:
        net = build_model(s_cfg, args.backend)
        net.load_state_dict(student_state)  # every configuration starts from the same weights
        loss = SegmentationLoss(StudentConfig().loss, None)
        if name == "baseline":
            module: torch.nn.Module = SupervisedModule(net, loss, "single")
        else:
            cfg = StudentConfig(model=s_cfg, voxel=voxel, backend=args.backend,
                                distill=DistillConfig.parse(CONFIGS[name]))
            # DistillModule puts the teacher in eval mode and freezes it (requires_grad_(False)).
            module = DistillModule(net, loss, cfg, labels, teacher)
        runners.append(Runner(name, module, device))
    return runners


# ---- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beams", type=int, default=64)
    p.add_argument("--columns", type=int, default=1024)
    p.add_argument("--scans", type=int, default=12, help="scans generated (the batch comes from the middle)")
    p.add_argument("--voxel-size", type=float, default=0.1)
    p.add_argument("--size", type=int, default=18, choices=[14, 18, 34], help="student MinkUNet depth")
    p.add_argument("--width", type=float, default=1.0, help="student width multiplier")
    p.add_argument("--teacher-size", type=int, default=18, choices=[14, 18, 34])
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=2, help="distinct batches cycled through the repeats")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first")
    p.add_argument("--configs", default="baseline,logit+affinity,all",
                   help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "minkowski", "spconv"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        print(f"error: unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    if "baseline" not in names:
        names.insert(0, "baseline")  # ratios need it
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    voxel = VoxelConfig(voxel_size=args.voxel_size)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_distill_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        batches, data_info = make_batches(args, work, voxel)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    batches = [b.to(device) for b in batches]
    rss_data = _peak_rss_mib()

    runners = build_runners(args, names, voxel, device)
    rss_warm: dict[str, float] = {}
    losses: dict[str, float] = {}
    for r in runners:  # warm up one configuration at a time so RSS growth is attributable
        for i in range(args.warmup):
            losses[r.name] = r.step(batches[i % len(batches)], record=False)
        rss_warm[r.name] = _peak_rss_mib()
    t_bench = time.perf_counter()
    for rep in range(args.repeats):
        batch = batches[rep % len(batches)]
        shift = rep % len(runners)  # rotate the order so no configuration always runs first
        for r in runners[shift:] + runners[:shift]:
            losses[r.name] = r.step(batch, record=True)
    bench_s = time.perf_counter() - t_bench

    base = statistics.median(runners[0].step_s)
    rows: list[dict[str, Any]] = []
    for r in runners:
        med = statistics.median(r.step_s)
        teacher = statistics.median(r.teacher_s)
        row = {
            "config": r.name,
            "kd": CONFIGS[r.name],
            "step_s_median": med,
            "step_s_min": min(r.step_s),
            "step_s_all": r.step_s,
            "forward_s_median": statistics.median(r.forward_s),
            "teacher_forward_s_median": teacher,
            "teacher_share": teacher / med,
            "ratio_to_baseline": med / base,
            # Per-repeat ratios (same batch, same repeat) show how stable the median ratio is.
            "ratio_per_repeat": [a / b for a, b in zip(r.step_s, runners[0].step_s)],
            "peak_rss_MiB_after_warmup": rss_warm[r.name],
            "last_loss": losses[r.name],
        }
        if r.cuda_peak_mib:
            row["cuda_peak_MiB_median"] = statistics.median(r.cuda_peak_mib)
        rows.append(row)

    print(
        f"student MinkUNet{args.size} w{args.width} | teacher MinkUNet{args.teacher_size} w{args.teacher_width} | "
        f"{args.beams}x{args.columns} scans at {args.voxel_size} m, batch {args.batch_size} | "
        f"single {data_info['voxels_single']:.0f} voxels, fused {data_info['voxels_fused']:.0f} voxels per batch | "
        f"device={args.device} threads={torch.get_num_threads()} | median of {args.repeats} (interleaved)"
    )
    header = (f"{'config':<16}{'step ms':>9}{'min ms':>9}{'fwd ms':>9}{'teacher ms':>11}{'teacher %':>10}"
              f"{'ratio':>7}{'RSS MiB':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['config']:<16}{1e3 * row['step_s_median']:>9.0f}{1e3 * row['step_s_min']:>9.0f}"
              f"{1e3 * row['forward_s_median']:>9.0f}{1e3 * row['teacher_forward_s_median']:>11.0f}"
              f"{100 * row['teacher_share']:>9.1f}%{row['ratio_to_baseline']:>7.2f}"
              f"{row['peak_rss_MiB_after_warmup']:>9.0f}")
    print(f"peak RSS: {_peak_rss_mib():.0f} MiB (after data preparation {rss_data:.0f} MiB); "
          f"timed loop {bench_s:.1f} s; data generated in {data_info['generate_s']:.1f} s, "
          f"fused in {data_info['fuse_s']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "data": data_info,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "peak_rss_MiB": _peak_rss_mib(),
            "results": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
