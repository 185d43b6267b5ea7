"""A scaling model of data-parallel Cl-InfoNCE training: measure one worker here, predict many.

Measured on this machine, in one process, for the config's model (default: the quickstart's)
with ``data.views`` views per image:

- the time of one training step (forward, loss, backward, optimiser step) at the measured batch
  (``--batch-per-worker``, or ``--measure-batch`` when that is smaller): the best and the median
  of ``--repeats`` (the machine is shared: the best repeat is the least disturbed);
- the floating-point operations of that step and of its loss (``torch.utils.flop_counter``),
  and the number of tensor operations it dispatches (views excluded): on a GPU each is at least
  one kernel launch;
- what crosses the network each step, read off the code (clinfo_ray/distributed.py and
  clinfo_ray/losses/cl_infonce.py): the loss all-gathers every rank's row count (twice, int64),
  the projections (N x proj_dim x 4 bytes, float32; N = global batch x views) and the cluster
  ids (N x 8 bytes); its backward all-reduces the gradient of the gathered projections (N x
  proj_dim x 4 bytes again); DDP all-reduces the gradients (trainable parameters x 4 bytes, in
  buckets of 25 MiB).

Scaled to the per-worker batch b (n = b x views): the encoder's FLOPs grow with b; the loss of
one rank contrasts its n anchors with all N = W n views of the global batch: four n x N x
proj_dim products (the logits, their recomputation in backward, both gradients), 8 n N d FLOPs,
growing with the number of workers W.

Predicted from stated assumptions (the flags, printed with the result). A GPU step takes the
longer of: its operations launched one after another (``--gpu-op-us`` each: eager PyTorch's
dispatch and launch) and its FLOPs at sustained rates (``--gpu-tflops`` for the encoder and
head under bf16 autocast, ``--gpu-fp32-tflops`` for the loss, which runs in float32). A
collective costs what the alpha-beta model says, twice: with the ring's latency (an all-reduce
of M bytes on W ranks 2(W-1) alpha + 2(W-1)/W x M / beta; an all-gather whose result is M bytes
(W-1) alpha + (W-1)/W x M / beta) and with a tree's (log2 W hops instead of W-1, the bandwidth
term unchanged): the pessimistic and the optimistic end for small messages. Up to
``--gpus-per-node`` ranks use the NVLink alpha and beta; more use InfiniBand's on every hop (the
slowest link paces a ring). DDP's all-reduce is assumed not to overlap the backward pass
(``--ddp-overlap`` 0: an upper bound on its cost); the loss's collectives cannot overlap
anything (the loss needs the gathered rows, the encoder's backward the all-reduced gradient).

Efficiencies, weak scaling (the per-worker batch fixed, the global batch W times larger):
- communication: compute / (compute + communication) at W ranks;
- overall: the 1-GPU step time / the W-GPU step time. It also pays for the loss growing with
  the global batch (more negatives for every anchor: more work, not waste).

    python benchmarks/scaling_model.py --batch-per-worker 64 --workers 1 8 64
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from clinfo_ray.config import TrainConfig, load_config
from clinfo_ray.losses import cl_infonce
from clinfo_ray.model import build_model
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.objective import TrainModule, train_step

QUICKSTART = Path(__file__).resolve().parents[1] / "clinfo_ray" / "configs" / "quickstart.yaml"
DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb
FLOAT32, INT64 = 4, 8
LOSS_PRODUCTS = 4  # n x N x d products in the loss's forward + backward (chunked: recomputed)
VIEWS_PER_CLUSTER = 64  # the measured batch's clusters


class _OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched, views (no kernel) excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        if not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Measured:
    """One worker, measured here at ``measured_batch`` images and scaled to ``batch``."""

    measured_batch: int
    batch: int  # the per-worker batch predicted for
    views: int
    image_size: int
    proj_dim: int
    trainable_parameters: int
    cpu_step_s: float  # best repeat, at measured_batch
    cpu_step_median_s: float
    measured_step_flops: float  # at measured_batch, loss included
    measured_loss_flops: float  # the loss alone over measured_batch x views, world size 1
    step_ops: int  # dispatched non-view operations a step (independent of the batch)
    threads: int

    @property
    def n(self) -> int:
        """Views a worker contributes to the global batch."""
        return self.batch * self.views

    def encoder_flops(self) -> float:
        """Forward + backward of encoder and head, and the optimiser, at ``batch``."""
        rest = self.measured_step_flops - self.measured_loss_flops
        return rest * self.batch / self.measured_batch

    def loss_flops(self, workers: int) -> float:
        """One rank's loss at W ranks: its n anchors against all W n views."""
        return LOSS_PRODUCTS * 2 * self.n * (workers * self.n) * self.proj_dim


def _times(fn: Callable[[], None], repeats: int) -> list[float]:
    fn()  # warm-up: allocations, first-call dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(cfg: TrainConfig, batch: int, measure_batch: int, repeats: int) -> Measured:
    torch.manual_seed(cfg.run.seed)
    b = min(batch, measure_batch)
    v, s, d = cfg.data.views, cfg.data.image_size, cfg.model.proj_dim
    module = TrainModule(build_model(cfg.model), None)
    optimizer, scheduler = build_optimizer(module, cfg.optim, steps_per_epoch=10_000)
    index = torch.arange(b)
    step_batch = {
        "views": torch.rand(b, v, 3, s, s),
        "index": index,
        "cluster": index // max(1, VIEWS_PER_CLUSTER // v),
        "label": index % 10,
    }

    def step() -> None:
        train_step(module, cfg, step_batch, optimizer, scheduler)

    times = _times(step, repeats)
    with FlopCounterMode(display=False) as step_counter:
        step()
    with _OpCounter() as ops:
        step()
    features = torch.randn(b, v, d, requires_grad=True)
    with FlopCounterMode(display=False) as loss_counter:
        cl_infonce(features, step_batch["cluster"], cfg.loss.temperature).backward()
    return Measured(
        measured_batch=b,
        batch=batch,
        views=v,
        image_size=s,
        proj_dim=d,
        trainable_parameters=sum(p.numel() for p in module.parameters() if p.requires_grad),
        cpu_step_s=min(times),
        cpu_step_median_s=statistics.median(times),
        measured_step_flops=float(step_counter.get_total_flops()),
        measured_loss_flops=float(loss_counter.get_total_flops()),
        step_ops=ops.ops,
        threads=torch.get_num_threads(),
    )


@dataclass(frozen=True)
class Network:
    """One class of link: alpha (seconds a hop), beta (bytes/s a rank). ``tree``: the latency
    of log2(W) hops instead of the ring's W-1 (NCCL's trees, recursive doubling); the
    bandwidth term is the ring's either way."""

    name: str
    alpha_s: float
    beta_bytes_per_s: float
    tree: bool = False

    def _hops(self, ranks: int) -> float:
        return math.ceil(math.log2(ranks)) if self.tree else ranks - 1

    def all_reduce(self, nbytes: float, ranks: int) -> float:
        moved = 2 * (ranks - 1) / ranks * nbytes / self.beta_bytes_per_s
        return 2 * self._hops(ranks) * self.alpha_s + moved

    def all_gather(self, result_bytes: float, ranks: int) -> float:
        moved = (ranks - 1) / ranks * result_bytes / self.beta_bytes_per_s
        return self._hops(ranks) * self.alpha_s + moved


def step_bytes(m: Measured, workers: int) -> dict[str, float]:
    """The bytes each collective of one step moves at ``workers`` ranks (whole results)."""
    rows = workers * m.n  # N: every view of the global batch
    return {
        "loss_all_gather_projections": rows * m.proj_dim * FLOAT32,
        "loss_all_gather_ids": rows * INT64,
        "loss_all_reduce_projection_grad": rows * m.proj_dim * FLOAT32,
        "ddp_all_reduce_grads": m.trainable_parameters * FLOAT32,
    }


def comm_seconds(m: Measured, workers: int, net: Network, ddp_overlap: float) -> float:
    if workers == 1:
        return 0.0
    nbytes = step_bytes(m, workers)
    counts = 2 * net.all_gather(workers * INT64, workers)  # the row counts, before each gather
    gathers = net.all_gather(nbytes["loss_all_gather_projections"], workers)
    gathers += net.all_gather(nbytes["loss_all_gather_ids"], workers)
    grad = net.all_reduce(nbytes["loss_all_reduce_projection_grad"], workers)
    ddp_total = nbytes["ddp_all_reduce_grads"]
    buckets = max(1, math.ceil(ddp_total / DDP_BUCKET_BYTES))
    ddp = buckets * net.all_reduce(ddp_total / buckets, workers)
    return counts + gathers + grad + (1.0 - ddp_overlap) * ddp


def gpu_step_seconds(m: Measured, workers: int, args: argparse.Namespace) -> tuple[float, str]:
    """The GPU compute of one step at W ranks, and what bounds it ("launch" or "FLOPs")."""
    launch = m.step_ops * args.gpu_op_us * 1e-6
    flops = m.encoder_flops() / (args.gpu_tflops * 1e12)
    flops += m.loss_flops(workers) / (args.gpu_fp32_tflops * 1e12)
    return (launch, "launch") if launch >= flops else (flops, "FLOPs")


def predict(m: Measured, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per GPU count: compute, communication by the ring and by the tree latency, and
    the efficiencies of both."""
    one_gpu, _ = gpu_step_seconds(m, 1, args)
    rows: list[dict[str, Any]] = []
    for w in args.workers:
        name, alpha_us, gbps = (
            ("NVLink", args.nvlink_alpha_us, args.nvlink_gbps)
            if w <= args.gpus_per_node
            else ("InfiniBand", args.ib_alpha_us, args.ib_gbps)
        )
        compute, bound = gpu_step_seconds(m, w, args)
        ring = comm_seconds(m, w, Network(name, alpha_us * 1e-6, gbps * 1e9), args.ddp_overlap)
        tree = comm_seconds(
            m, w, Network(name, alpha_us * 1e-6, gbps * 1e9, tree=True), args.ddp_overlap
        )
        rows.append(
            {
                "gpus": w,
                "network": name if w > 1 else "-",
                "global_batch": w * m.batch,
                "gathered_MiB": step_bytes(m, w)["loss_all_gather_projections"] / 2**20,
                "compute_ms": compute * 1e3,
                "bound": bound,
                "comm_ring_ms": ring * 1e3,
                "comm_tree_ms": tree * 1e3,
                "comm_efficiency_ring": compute / (compute + ring),
                "comm_efficiency_tree": compute / (compute + tree),
                "overall_efficiency_ring": one_gpu / (compute + ring),
                "overall_efficiency_tree": one_gpu / (compute + tree),
                "images_per_s_ring": w * m.batch / (compute + ring),
            }
        )
    return rows


def report(m: Measured, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The measured numbers and the predicted table, in Markdown."""
    per = step_bytes(m, 1)
    rate = m.measured_step_flops / m.cpu_step_s
    scaled = "" if m.batch == m.measured_batch else f", scaled to {m.batch} images"
    lines = [
        f"Measured here (1 process, {m.threads} torch threads), {m.views} views of "
        f"{m.image_size} px an image, {m.trainable_parameters:,} trainable parameters:",
        "",
        f"- CPU step at {m.measured_batch} images a worker: {m.cpu_step_s * 1e3:.1f} ms "
        f"(median {m.cpu_step_median_s * 1e3:.1f}); {m.measured_step_flops / 1e9:.2f} GFLOP "
        f"({rate / 1e9:.0f} GFLOP/s here), of which the loss {m.measured_loss_flops / 1e9:.3f}; "
        f"{m.step_ops} tensor operations",
        f"- per GPU at {m.batch} images a worker{scaled}: encoder, head and optimiser "
        f"{m.encoder_flops() / 1e9:.1f} GFLOP, the loss {m.loss_flops(1) / 1e9:.2f} GFLOP x W",
        f"- moved per step, for each worker's {m.batch} images: projections "
        f"{per['loss_all_gather_projections']:,.0f} B gathered and their gradient all-reduced, "
        f"ids {per['loss_all_gather_ids']:,.0f} B gathered; and DDP's gradients, "
        f"{per['ddp_all_reduce_grads']:,.0f} B all-reduced whatever W",
        "",
        "| GPUs | network | global batch | projections gathered (MiB) | GPU compute ms (bound) "
        "| comm ms, ring / tree | comm. efficiency, ring / tree | overall efficiency, ring / tree "
        "| images/s (ring) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['gpus']} | {r['network']} | {r['global_batch']:,} | "
            f"{r['gathered_MiB']:.2f} | {r['compute_ms']:.2f} ({r['bound']}) | "
            f"{r['comm_ring_ms']:.2f} / {r['comm_tree_ms']:.2f} | "
            f"{r['comm_efficiency_ring']:.0%} / {r['comm_efficiency_tree']:.0%} | "
            f"{r['overall_efficiency_ring']:.0%} / {r['overall_efficiency_tree']:.0%} | "
            f"{r['images_per_s_ring']:,.0f} |"
        )
    return "\n".join(lines)


ASSUMPTIONS = (
    "gpu_op_us",
    "gpu_tflops",
    "gpu_fp32_tflops",
    "gpus_per_node",
    "nvlink_gbps",
    "nvlink_alpha_us",
    "ib_gbps",
    "ib_alpha_us",
    "ddp_overlap",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(QUICKSTART), help="a train config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--batch-per-worker", type=int, default=None, help="default: config's")
    parser.add_argument("--measure-batch", type=int, default=256, help="largest batch run here")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    # the assumptions: each is printed with the result
    parser.add_argument("--gpu-op-us", type=float, default=8.0, help="us a dispatched op")
    parser.add_argument("--gpu-tflops", type=float, default=100.0, help="bf16, sustained")
    parser.add_argument("--gpu-fp32-tflops", type=float, default=40.0, help="sustained")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nvlink-gbps", type=float, default=360.0, help="GB/s a GPU (bus)")
    parser.add_argument("--nvlink-alpha-us", type=float, default=3.0, help="us a ring hop")
    parser.add_argument("--ib-gbps", type=float, default=45.0, help="GB/s a GPU (bus)")
    parser.add_argument("--ib-alpha-us", type=float, default=8.0, help="us a ring hop")
    parser.add_argument("--ddp-overlap", type=float, default=0.0, help="DDP comm hidden, 0-1")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    args.workers = sorted({1, *args.workers})
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    batch = args.batch_per_worker or cfg.data.batch_size_per_worker
    measured = measure(cfg, batch, args.measure_batch, args.repeats)
    rows = predict(measured, args)
    assumptions = {k: getattr(args, k) for k in ASSUMPTIONS}
    print("Assumptions: " + ", ".join(f"{k}={v:g}" for k, v in assumptions.items()))
    print(report(measured, rows, args))
    if args.json:
        payload = {"measured": asdict(measured), "assumptions": assumptions, "predicted": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
