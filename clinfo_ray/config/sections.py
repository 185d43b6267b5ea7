"""The stage configs: one frozen dataclass per stage, each checked in ``__post_init__``.

A bad value raises :class:`~clinfo_ray.config.section_base.ConfigError` naming its dotted key
(``model.backbone``) and the value. Values that follow from others are properties, never fields
written later. The checks every section shares are in ``section_base.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from clinfo_ray.config.section_base import _Section

BackboneName = Literal["small_cnn", "resnet18", "resnet50"]
ClusterMethod = Literal["tags", "tags-kmeans", "hierarchy", "labels", "instance", "kmeans"]
LossMethod = Literal["simclr", "clinfonce", "clinfonce-kmeans", "supcon", "ce-clusters", "pcl"]
# Where a stage runs: "auto" is the GPU when there is one (faiss: when faiss sees one; Ray: when
# the cluster offers one), else the CPU. One spelling for every stage.
Device = Literal["auto", "cpu", "gpu"]
KMeansInit = Literal["afk-mc2", "random", "k-means++"]
SourceName = Literal["emoji", "imagefolder", "cub200", "ut-zappos50k", "fashion-mnist", "mnist"]

# data.decode_size when not given: this many times image_size (capped by the source's size).
DECODE_MULTIPLE = 2
# Feature dimension of each backbone's pooled output (small_cnn: 8 x its width).
_RESNET_FEATURE_DIM = {"resnet18": 512, "resnet50": 2048}


@dataclass(frozen=True)
class DataConfig(_Section):
    """The dataset and the stream of augmented views."""

    SECTION: ClassVar[str] = "data"
    dataset_dir: str = "data/emoji"  # folder of Parquet shards + manifest.json
    image_size: int = 32  # side of each square crop, pixels
    # Side the training images are decoded to (shorter side resized, centre square) before the
    # random-resized crop cuts the views out of it: None means DECODE_MULTIPLE x image_size,
    # capped by the source images' size (resolved on the driver when a run starts, and written
    # into the run's config). A crop of 0.2 of the area then keeps source detail instead of
    # blowing up a few pixels of an image already shrunk to image_size.
    decode_size: int | None = None
    views: int = 2  # augmented views per image
    crop_scale_min: float = 0.2  # RandomResizedCrop scale lower bound (upper bound 1.0)
    color_jitter: float = 0.4  # brightness/contrast/saturation strength (hue is a quarter)
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    # Where the views are made: in Ray Data's tasks ("ray_data": uint8 views travel to the
    # workers) or by each Train worker on its own device ("worker": the decoded image travels;
    # on a GPU the augmentation is nearly free, on a small CPU machine it saves the hand-over).
    augment_on: Literal["ray_data", "worker"] = "ray_data"
    batch_size_per_worker: int = 128  # images (not views) per worker step
    # Gradient caching: each worker's batch goes through the model in micro-batches of this many
    # images (activation memory: one micro-batch's), the loss stays one over the global batch;
    # BatchNorm normalises each micro-batch apart (as DDP's per-device BatchNorm each device's
    # batch). None: the whole batch in one pass. clinfo_ray/training/grad_cache.py
    micro_batch_size: int | None = None
    # How the decoded images are kept between epochs (D = the decode side):
    #   "none":         Ray Data reads and decodes the Parquet again every epoch (any size of set)
    #   "object_store": decoded once into Ray's object store (N·3·D² bytes in all), one object
    #                   per piece of the split; each epoch's tasks fetch their pieces from it
    #   "worker":       decoded once; every worker holds the whole split (N·3·D² bytes each, on
    #                   its GPU when it has one) and draws each epoch's batches from one global
    #                   permutation seeded by (run.seed, epoch): an exact shuffle with no Ray Data
    #                   work per epoch. For sets that fit on each worker (the emoji set: 21 MB).
    cache: Literal["none", "object_store", "worker"] = "none"
    # Share of the train split held out for validation (online kNN, every selection), carved by
    # a salted hash of the image id (clinfo_ray.data.splits.val_mask): the same rows whatever
    # run.seed or the number of workers. 0 means no validation split.
    val_fraction: float = 0.1
    # The downstream label T: the column every reader of a label takes (the `labels` cluster
    # method, so supcon; the cluster statistics; the online kNN; the frozen-feature
    # evaluation), presented to them as `label`. Emoji: label = subcategory (99 classes),
    # coarse_label = category (10).
    label_column: Literal["label", "coarse_label"] = "label"

    def _validate(self) -> None:
        self._require(bool(self.dataset_dir), "dataset_dir", "a non-empty path")
        self._require(0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)")
        self._require(self.image_size >= 8, "image_size", ">= 8")
        ok = self.decode_size is None or self.decode_size >= self.image_size
        self._require(ok, "decode_size", f"null or >= data.image_size ({self.image_size})")
        self._require(self.views >= 1, "views", ">= 1")
        self._require(0.0 < self.crop_scale_min <= 1.0, "crop_scale_min", "in (0, 1]")
        self._require(0.0 <= self.color_jitter <= 1.0, "color_jitter", "in [0, 1]")
        self._require(0.0 <= self.color_jitter_prob <= 1.0, "color_jitter_prob", "in [0, 1]")
        self._require(0.0 <= self.grayscale_prob <= 1.0, "grayscale_prob", "in [0, 1]")
        self._require(self.batch_size_per_worker >= 1, "batch_size_per_worker", ">= 1")
        micro, batch = self.micro_batch_size, self.batch_size_per_worker
        ok = micro is None or (micro >= 1 and batch % micro == 0)
        rule = f"null, or >= 1 and a divisor of data.batch_size_per_worker ({batch})"
        self._require(ok, "micro_batch_size", rule)

    @property
    def decode_side_bound(self) -> int:
        """The decode side, or its upper bound while ``decode_size`` is not yet resolved."""
        return self.decode_size or DECODE_MULTIPLE * self.image_size

    @property
    def crop_scale(self) -> tuple[float, float]:
        return (self.crop_scale_min, 1.0)


@dataclass(frozen=True)
class KMeansSettings(_Section):
    """How faiss k-means runs, wherever it runs (tags-kmeans, the kmeans table, re-clustering)."""

    SECTION: ClassVar[str] = "clusters.kmeans"
    niter: int = 20  # iterations
    nredo: int = 1  # restarts, the best objective kept
    init: KMeansInit = "afk-mc2"  # centroid seeding (afk-mc2: k-means++ quality at random's cost)
    seed: int | None = None  # None: run.seed
    device: Device = "auto"  # faiss on the GPU: auto = when faiss sees one

    def _validate(self) -> None:
        self._require(self.niter >= 1, "niter", ">= 1")
        self._require(self.nredo >= 1, "nredo", ">= 1")

    @property
    def seed_value(self) -> int:
        """The seed to draw from: ``seed``, or 0 where no run gave one (see TrainConfig)."""
        return 0 if self.seed is None else self.seed


@dataclass(frozen=True)
class ClustersConfig(_Section):
    """Where each image's cluster id comes from (used by clinfonce and ce-clusters)."""

    SECTION: ClassVar[str] = "clusters"
    # None: what loss.method implies (simclr: instance, supcon: labels, clinfonce-kmeans and
    # pcl: kmeans; clinfonce and ce-clusters: tags-kmeans). Naming another one than the loss
    # uses is an error, never silently overridden.
    method: ClusterMethod | None = None
    k: int = 100  # clusters of tags-kmeans and kmeans (pcl: loss.pcl_ks)
    top_k: int = 20  # tags kept by the `tags` method (at most 2**top_k clusters)
    tag_ranking: Literal["entropy", "frequency"] = "entropy"
    tags_include: tuple[str, ...] = ()  # tags, tags-kmeans: only these tags (empty: all)
    tags_exclude: tuple[str, ...] = ()  # tags, tags-kmeans: never these tags
    # hierarchy: a row's cluster is the first hierarchy_level ancestors of its `hierarchy`
    # column (coarse to fine; 1 = the coarsest level, e.g. the emoji category); rows with fewer
    # ancestors than that are singletons.
    hierarchy_level: int = 1
    table_path: str | None = None  # a prebuilt id -> cluster table; None builds it at start
    recluster_every: int = 1  # kmeans: epochs between re-clusterings
    warmup_epochs: int = 0  # kmeans: epochs with instance clusters before the first k-means
    # tags-kmeans: the TF-IDF matrix is dense up to this many bytes, randomly projected to
    # tfidf_projection_dim dimensions beyond it
    tfidf_max_dense_bytes: int = 1 << 30
    tfidf_projection_dim: int = 256
    kmeans: KMeansSettings = dataclasses.field(default_factory=KMeansSettings)
    # labels: each label's rows dealt, in a seeded random order and round robin, into this
    # many clusters (train and test rows separately): H(Z|T) = log2 m when every label's train
    # count is a multiple of m, I(Z;T) = H(T). 1: off.
    label_split: int = 1
    # labels: the train split's distinct labels dealt, in a seeded random order and round
    # robin, into this many clusters (labels only in test after them): H(Z|T) = 0,
    # I(Z;T) = H(Z) (log2 K when balanced). 0: off.
    label_merge: int = 0
    label_draw_seed: int | None = None  # labels: seed of label_split/label_merge (None: run.seed)

    def _validate(self) -> None:
        self._require(self.k >= 2, "k", ">= 2")
        # k bits are packed into one int64 code per image
        self._require(1 <= self.top_k <= 62, "top_k", "in 1..62")
        self._require(self.hierarchy_level >= 1, "hierarchy_level", ">= 1")
        self._require(self.table_path is None or bool(self.table_path), "table_path", "a path")
        self._require(self.recluster_every >= 1, "recluster_every", ">= 1")
        self._require(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        self._require(self.tfidf_max_dense_bytes >= 1, "tfidf_max_dense_bytes", ">= 1")
        self._require(self.tfidf_projection_dim >= 1, "tfidf_projection_dim", ">= 1")
        both = sorted(set(self.tags_include) & set(self.tags_exclude))
        self._require(not both, "tags_exclude", f"disjoint from tags_include ({both[:1]} in both)")
        self._require(self.label_split >= 1, "label_split", ">= 1 (1: off)")
        self._require(self.label_merge == 0 or self.label_merge >= 2, "label_merge", "0 or >= 2")
        both_on = f"0 while clusters.label_split is {self.label_split} (split or merge, not both)"
        self._require(self.label_merge == 0 or self.label_split == 1, "label_merge", both_on)
        if self.method not in (None, "labels") and self.label_keys_set:
            rule = f"left out: it shapes `labels` clusters; clusters.method is {self.method!r}"
            self._require(False, self.label_keys_set[0], rule)

    @property
    def label_keys_set(self) -> list[str]:
        """The label_* keys given other values than their defaults."""
        defaults = {"label_split": 1, "label_merge": 0, "label_draw_seed": None}
        return [name for name, off in defaults.items() if getattr(self, name) != off]

    @property
    def draws_labels(self) -> bool:
        """Whether the `labels` table is a seeded draw (label_split or label_merge on)."""
        return self.label_split > 1 or self.label_merge > 0

    @property
    def label_draw_seed_value(self) -> int:
        """The seed of the label draw: ``label_draw_seed``, or 0 where no run gave one."""
        return 0 if self.label_draw_seed is None else self.label_draw_seed


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Encoder (backbone) and projection head."""

    SECTION: ClassVar[str] = "model"
    backbone: BackboneName = "small_cnn"
    small_image_stem: bool = True  # 3x3 stride-1 first conv, no max-pool (32-px images)
    cnn_width: int = 32  # small_cnn: channels of its first layer (last layer has 8x)
    proj_hidden: int | None = None  # hidden width of the head; None: the feature dim
    proj_dim: int = 128
    proj_batch_norm: bool = True  # BN after the head's hidden layer (SimCLR v2, lightly)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model on the worker

    def _validate(self) -> None:
        self._require(self.cnn_width >= 1, "cnn_width", ">= 1")
        self._require(self.proj_hidden is None or self.proj_hidden >= 1, "proj_hidden", ">= 1")
        self._require(self.proj_dim >= 1, "proj_dim", ">= 1")

    @property
    def feature_dim(self) -> int:
        """Width of the encoder's pooled features (the input of the head and of evaluation)."""
        return _RESNET_FEATURE_DIM.get(self.backbone, 8 * self.cnn_width)

    @property
    def proj_hidden_dim(self) -> int:
        return self.proj_hidden if self.proj_hidden is not None else self.feature_dim


@dataclass(frozen=True)
class LossConfig(_Section):
    """The objective. simclr = Cl-InfoNCE over instance clusters, supcon = over labels."""

    SECTION: ClassVar[str] = "loss"
    method: LossMethod = "clinfonce"
    # Cl-InfoNCE's temperature; pcl: also the mean of each granularity's concentrations
    temperature: float = 0.1
    base_temperature: float | None = None  # loss scaled by temperature / base_temperature
    # pcl: clusters of each granularity of the k-means prototypes, in any order (the first
    # one's table is the one published). Here, not in clusters: only the loss uses them
    # (`clinfo-ray clusters` never builds prototypes).
    pcl_ks: tuple[int, ...] = (50, 100, 200)
    proto_weight: float = 1.0  # pcl: weight of the ProtoNCE term (the InfoNCE term's is 1)

    def _validate(self) -> None:
        self._require(self.temperature > 0, "temperature", "> 0")
        ok = self.base_temperature is None or self.base_temperature > 0
        self._require(ok, "base_temperature", "> 0 or null")
        ok = len(self.pcl_ks) >= 1 and all(k >= 2 for k in self.pcl_ks)
        self._require(ok, "pcl_ks", "a non-empty list of cluster counts, each >= 2")
        self._require(self.proto_weight >= 0, "proto_weight", ">= 0")


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer and per-step schedule (linear warm-up, then cosine to final_lr_fraction x lr)."""

    SECTION: ClassVar[str] = "optim"
    name: Literal["sgd", "lars"] = "sgd"
    lr: float = 0.5  # peak learning rate, absolute (not rescaled by batch size)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # never applied to biases and norm parameters
    trust_coefficient: float = 0.001  # LARS eta
    warmup_epochs: float = 10.0
    epochs: int = 100
    final_lr_fraction: float = 0.0
    amp: bool = False  # bf16 autocast on GPU (ignored on CPU)

    def _validate(self) -> None:
        self._require(self.lr > 0, "lr", "> 0")
        self._require(0.0 <= self.momentum < 1.0, "momentum", "in [0, 1)")
        self._require(self.weight_decay >= 0, "weight_decay", ">= 0")
        self._require(self.trust_coefficient > 0, "trust_coefficient", "> 0")
        self._require(self.epochs >= 1, "epochs", ">= 1")
        ok = 0.0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0
        self._require(ok, "warmup_epochs", f">= 0 and < optim.epochs ({self.epochs})")
        self._require(0.0 <= self.final_lr_fraction <= 1.0, "final_lr_fraction", "in [0, 1]")


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Online kNN during training, and the frozen-feature evaluation of ``clinfo-ray eval``."""

    SECTION: ClassVar[str] = "eval"
    knn_k: int = 20
    knn_temperature: float = 0.07  # weights exp(cos / t) of the neighbours' votes
    knn_every: int = 5  # epochs between online kNN evaluations; 0 turns it off
    linear_epochs: int = 100
    linear_lr: float = 0.1
    linear_weight_decay: float = 0.0
    linear_batch_size: int = 256
    batch_size: int = 256  # images per encoder call when embedding a split
    device: Device = "auto"  # the encoder actors of clinfo-ray eval: auto = GPU when Ray has one
    num_actors: int | None = None  # encoder actors; None: one per GPU, else half the CPUs
    seed: int | None = None  # the linear probe's seed; None: run.seed

    def _validate(self) -> None:
        self._require(self.knn_k >= 1, "knn_k", ">= 1")
        self._require(self.knn_temperature > 0, "knn_temperature", "> 0")
        self._require(self.knn_every >= 0, "knn_every", ">= 0")
        self._require(self.linear_epochs >= 1, "linear_epochs", ">= 1")
        self._require(self.linear_lr > 0, "linear_lr", "> 0")
        self._require(self.linear_weight_decay >= 0, "linear_weight_decay", ">= 0")
        self._require(self.linear_batch_size >= 1, "linear_batch_size", ">= 1")
        self._require(self.batch_size >= 1, "batch_size", ">= 1")
        self._require(self.num_actors is None or self.num_actors >= 1, "num_actors", ">= 1")


@dataclass(frozen=True)
class RunConfig(_Section):
    """Where results go and how the Ray Train run is laid out."""

    SECTION: ClassVar[str] = "run"
    name: str = "quickstart"  # the same name again resumes an interrupted run
    output_dir: str = "runs"
    num_workers: int = 2
    device: Device = "cpu"  # the Train workers: gpu = one GPU each; auto = GPUs when Ray has them
    cpus_per_worker: float = 1.0  # fractional allowed
    max_failures: int = 0  # worker-group restarts before giving up (-1: unlimited)
    checkpoints_to_keep: int = 2
    seed: int = 0  # every draw of a run (and the default of clusters.kmeans.seed, eval.seed)

    def _validate(self) -> None:
        ok = bool(self.name) and "/" not in self.name and self.name not in (".", "..")
        self._require(ok, "name", "a non-empty name without '/'")
        self._require(bool(self.output_dir), "output_dir", "a non-empty path")
        self._require(self.num_workers >= 1, "num_workers", ">= 1")
        self._require(self.cpus_per_worker > 0, "cpus_per_worker", "> 0")
        self._require(self.max_failures >= -1, "max_failures", ">= -1")
        self._require(self.checkpoints_to_keep >= 1, "checkpoints_to_keep", ">= 1")


@dataclass(frozen=True)
class PrepareConfig(_Section):
    """``clinfo-ray prepare``: what to turn into a dataset folder, and where.

    Rows are written in one random permutation drawn from ``seed`` (manifest
    ``row_order.permutation_seed``), never in the source's order; the split does not depend on it.
    """

    SECTION: ClassVar[str] = "prepare"
    source: SourceName = "emoji"
    out: str = "data/emoji"  # the dataset folder to write
    images: str | None = None  # image folder (imagefolder) or dataset root (cub200, ...)
    annotations: str | None = None  # imagefolder: CSV path,tags,label or JSON Lines
    styles: tuple[str, ...] = ("google",)  # emoji: renderings, e.g. google,apple,twitter
    test_style: str | None = None  # emoji: this style is the test split
    test_fraction: float = 0.2  # hash split fraction (sources without their own split)
    # Keep at most this many train images of each label (chosen by a salted hash of the id, so
    # the same rows whatever seed); the test split stays whole. None keeps every image. For a
    # study of a large set (Fashion-MNIST's 60,000) within a small machine's budget.
    train_per_class: int | None = None
    cache: str | None = None  # npm download cache (None: $CLINFO_RAY_CACHE or ~/.cache/clinfo-ray)
    shard_size: int = 2000  # rows per Parquet file
    overwrite: bool = False  # replace an existing folder
    seed: int = 0  # seed of the order the rows are written in (not of the split)

    def _validate(self) -> None:
        self._require(bool(self.out), "out", "a non-empty path")
        self._require(0.0 <= self.test_fraction < 1.0, "test_fraction", "in [0, 1)")
        self._require(self.shard_size >= 1, "shard_size", ">= 1")
        ok = self.train_per_class is None or self.train_per_class >= 1
        self._require(ok, "train_per_class", "null or >= 1")
        if self.source == "imagefolder":
            self._require(self.images is not None, "images", "a folder for imagefolder")
            self._require(self.annotations is not None, "annotations", "a file for imagefolder")
        if self.source in ("cub200", "ut-zappos50k"):
            self._require(self.images is not None, "images", f"the root folder of {self.source}")
