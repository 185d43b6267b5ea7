"""``clinfo-ray tune --space FILE --config FILE|NAME [--set key=value ...] [--address ADDR]``.

A Ray Tune search over the training config: every trial is a whole multi-worker training run,
scored by the online kNN top-1 of the validation split and stopped early by ASHA. A bad space,
config or dataset fails in one line before Ray starts. Writes ``trials.csv``, ``best.yaml`` and
a plot into ``<run.output_dir>/tune/NAME/`` and prints the trials' table; running the same
command again resumes the search.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from clinfo_ray.commands.flags import add_address_argument, add_config_arguments, flag_overrides

if TYPE_CHECKING:
    from clinfo_ray.config import TrainConfig
    from clinfo_ray.tuning.search import SearchSettings
    from clinfo_ray.tuning.space import SearchSpace

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinfo_ray.tuning.space import SPACES_DIR

    shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    parser.add_argument(
        "--space",
        required=True,
        metavar="FILE",
        help=f"search space YAML: a path, or the name of one in tune_spaces/ ({shipped})",
    )
    add_config_arguments(parser, required=True)
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        metavar="N",
        help="draws of the space (a grid is repeated N times; default: the space's "
        "num_samples, else 1)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        metavar="M",
        help="trials run at once (default: as many as the cluster's CPUs (less 2 for Ray "
        "Data) and GPUs fit, from run.num_workers x run.cpus_per_worker)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="the search's folder under <run.output_dir>/tune/ (default: the space file's "
        "name); the same name again resumes the search",
    )
    parser.add_argument(
        "--scheduler",
        choices=("asha", "fifo"),
        default="asha",
        help="asha: stop the weaker trials early (default); fifo: run every trial to the end",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="ASHA: epochs every trial runs before it can be stopped (default: a quarter of "
        "optim.epochs, at least 1)",
    )
    parser.add_argument(
        "--reduction-factor",
        type=float,
        default=2.0,
        metavar="F",
        help="ASHA: 1/F of the trials reaching a rung go on (default: 2)",
    )
    parser.add_argument(
        "--search",
        choices=("random", "optuna"),
        default="random",
        help="how values are drawn: random (and grids; default) or optuna (TPE; needs the "
        "optuna extra: pip install 'clinfo-ray[optuna]')",
    )
    add_address_argument(parser)


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """The trials' dataset, output folder and cluster table: the base config with the space's
    ``set:`` and the flags (checked inside a submitted job)."""
    from clinfo_ray.commands.common import train_locations
    from clinfo_ray.config import load_config, parse_set_overrides
    from clinfo_ray.tuning.space import load_space

    items = flag_overrides(args)
    cli = parse_set_overrides(items)
    space = load_space(args.space, load_config(args.config, items), cli)
    return train_locations(space.base_config(load_config(args.config, items), cli))


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError, load_config, parse_set_overrides
    from clinfo_ray.training.launch import check_before_ray, with_absolute_paths
    from clinfo_ray.tuning.search import SearchSettings, check_base, trial_resources
    from clinfo_ray.tuning.space import load_space

    try:
        items = flag_overrides(args)
        cli = parse_set_overrides(items)
        space = load_space(args.space, load_config(args.config, items), cli)
        base = space.base_config(load_config(args.config, items), cli)
        counts = {"--num-samples": args.num_samples, "--max-concurrent": args.max_concurrent}
        for flag, value in counts.items():
            if value is not None and value < 1:
                raise ConfigError(f"{flag}: must be >= 1; got {value}")
        settings = SearchSettings(
            name=args.name or space.name,
            num_samples=args.num_samples or space.num_samples,
            max_concurrent=args.max_concurrent,
            scheduler=args.scheduler,
            algorithm=args.search,
            grace_period=args.grace_period,
            reduction_factor=args.reduction_factor,
        )
        check_base(base, space, settings)
        check_before_ray(base)  # the dataset and the batch, before Ray starts
        base = with_absolute_paths(base)  # trials run in other processes and folders
    except ConfigError as err:
        return fail("tune", err)

    one_trial = trial_resources(base, gpu=False)["CPU"]
    connect_ray(args.address, cpus_needed=one_trial * (args.max_concurrent or 1))
    return _search(base, space, settings)


def _search(base: TrainConfig, space: SearchSpace, settings: SearchSettings) -> int:
    import ray

    from clinfo_ray.devices import ray_uses_gpu
    from clinfo_ray.storage import location as loc
    from clinfo_ray.tuning.report import best_record, collect, format_table, write_outputs
    from clinfo_ray.tuning.search import derived_max_concurrent, run_search, search_dir
    from clinfo_ray.tuning.trial import TRIALS_DIR

    gpu = ray_uses_gpu(base.run.device)
    concurrent = settings.max_concurrent or derived_max_concurrent(
        base, ray.cluster_resources(), gpu
    )
    folder = search_dir(base, settings.name)
    log.info(
        "search %s: %s, %d trial(s) at once, in %s",
        settings.name,
        ", ".join(space.keys),
        concurrent,
        folder,
    )
    grid = run_search(base, space, settings, concurrent)
    records = collect(grid, folder, space, base.optim.epochs)
    written = write_outputs(folder, records, space, base, settings.name)
    best = best_record(records)
    print(format_table(records, space.keys, best))
    print(f"trials:  {written['csv']}")
    if written["best"] is not None:
        print(f"best:    {written['best']}  (clinfo-ray train --config {written['best']})")
    if written["plot"] is not None:
        print(f"plot:    {written['plot']}")
    print(f"tensorboard --logdir {loc.join(folder, TRIALS_DIR)}")
    if best is None:
        from clinfo_ray.commands.common import fail

        return fail("tune", "no trial reported a score (see the errors above)", status=1)
    return 0
