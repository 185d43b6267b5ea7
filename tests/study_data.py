"""Shared test data of the study's tests: a small study file and hand-made trial records."""

from __future__ import annotations

from clinfo_ray.study.records import TrialRecord

STUDY_FILE = """\
study:
  name: small
  config: quickstart
  seeds: [0, 1]
  probe: {{weight_decays: [0.0, 1.0e-3], epochs: [50]}}
set:
  optim.epochs: 20
methods:
  simclr: {{about: SimCLR, set: {{loss.method: simclr}}}}
  tags: {{about: tags, set: {{loss.method: clinfonce, clusters.method: tags, optim.epochs: 30}}}}
  supcon: {{set: {{loss.method: supcon}}}}
claims:
  - {{id: "1", text: tags beat simclr, kind: paired, better: [tags], worse: simclr,
      reference: supcon}}
  - {{id: "2", text: r, kind: description, methods: [tags, supcon]}}
quick:
  methods: [simclr, tags]
  seeds: [0]
  set: {{optim.epochs: 2, optim.warmup_epochs: 1}}
{extra}"""


def trial(
    method: str,
    seed: int,
    val: float,
    test: float | None,
    clusters: tuple[float, float] | None,
    *,
    weight_decay: float = 1e-4,
    setting: str = "",
) -> TrialRecord:
    return TrialRecord(
        method=method,
        seed=seed,
        loss_method="supcon" if method == "supcon" else "cl_infonce",
        cluster_method="instance" if clusters is None else "tags",
        val={"linear_top1": val, "knn_top1": val - 0.1},
        test=None
        if test is None
        else {"linear_top1": test, "knn_top1": test - 0.05, "linear_top5": 0.95},
        probe={"weight_decay": weight_decay, "epochs": 50, "train_top1": 0.9},
        clusters=None
        if clusters is None
        else {
            "num_clusters": 8,
            "mutual_information_bits": clusters[0],
            "conditional_entropy_bits": clusters[1],
        },
        epochs=10,
        train_seconds=12.5,
        eval_seconds=3.25,
        trial_id=f"{method}-{seed}",
        setting=setting,
    )


# method -> (validation at seed 0, test by seed, (I(Z;T), H(Z|T)) or None)
STUDY_TABLE = {
    "simclr": (0.50, (0.50, 0.52, 0.54), None),
    "tags-top8": (0.62, (0.60, 0.61, 0.65), (1.0, 3.0)),  # best of the tags on validation
    "tags-top32": (0.60, (0.70, 0.70, 0.70), (2.0, 2.0)),  # best of the tags on test
    "kmeans-64": (0.55, (0.53, 0.49, 0.57), (0.5, 4.0)),
    "supcon": (0.80, (0.70, 0.72, 0.74), (3.0, 0.0)),
}


def study_records() -> list[TrialRecord]:
    records = []
    for method, (val, tests, clusters) in STUDY_TABLE.items():
        for seed, test in enumerate(tests):
            decay = 1e-3 if seed == 1 else 1e-4  # 1e-4 chosen twice out of three
            records.append(
                trial(method, seed, val + 0.01 * seed, test, clusters, weight_decay=decay)
            )
    return records
