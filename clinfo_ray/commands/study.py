"""``clinfo-ray study --config NAME|FILE [--quick] [--report-only] [--out DIR] [--page FILE]``.

Trains every (method, seed) of a study as a trial of a Ray Tune grid, evaluates each trained
encoder once (the linear probe's setting chosen by cross-validation on the fitting rows, then
that one probe scoring the validation and the test split once each), and writes
the raw results (``results.jsonl``, ``meta.json``), the statistics, plots and the results page.
Running it again resumes the study; ``--report-only`` rewrites the page and plots from the raw
results alone, without Ray. A bad study file fails in one line before Ray starts. The study's
folder (``run.output_dir``) and OUT may be in a bucket (``s3://...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinfo_ray.commands.flags import add_address_argument

if TYPE_CHECKING:
    from clinfo_ray.study.spec import Study

log = logging.getLogger(__name__)

META_FILE = "meta.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinfo_ray.study.spec import STUDIES_DIR

    bundled = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help=f"the study: a YAML path, or the name of a bundled one ({bundled})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config override for every trial (wins over the study's own)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the study's reduced grid (its 'quick' section)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the page and plots from OUT's results.jsonl and meta.json; no training",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="copy the study's results so far into OUT and write the page, without training "
        "(while the study runs elsewhere: the page says how many trials are done)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the raw results, plots and page go, a folder or a bucket URI (default: the "
        "study's folder, <run.output_dir>/study/NAME)",
    )
    parser.add_argument(
        "--page",
        default=None,
        metavar="FILE",
        help="the results page (default: OUT/results.md; with OUT in a bucket, inside OUT)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        metavar="M",
        help="trials run at once (default: what the cluster's CPUs and GPUs fit)",
    )
    add_address_argument(parser)


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """The study's dataset and runs, --out and --page (checked inside a submitted job)."""
    from clinfo_ray.commands.common import train_locations
    from clinfo_ray.config import parse_set_overrides
    from clinfo_ray.study.study_file import load_study

    study = load_study(args.config, parse_set_overrides(args.set), quick=args.quick)
    return {**train_locations(study.base), "--out": args.out, "--page": args.page}


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import fail
    from clinfo_ray.config import ConfigError, parse_set_overrides
    from clinfo_ray.study.study_file import load_study

    try:
        study = load_study(args.config, parse_set_overrides(args.set), quick=args.quick)
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent: must be >= 1; got {args.max_concurrent}")
    except ConfigError as err:
        return fail("study", err)
    from clinfo_ray.storage import location as loc
    from clinfo_ray.storage.checks import LocationError, check_remote
    from clinfo_ray.study.run import study_dir

    out = loc.absolute(args.out) if args.out else study_dir(study)
    page = loc.absolute(args.page) if args.page else loc.join(out, "results.md")
    try:
        if (loc.is_uri(out) or loc.is_uri(page)) and not page.startswith(out + "/"):
            raise ConfigError(f"--page: {page}: with --out in a bucket the page goes in it too")
        key = "--out" if args.out else "run.output_dir"  # OUT is the study's folder by default
        check_remote(key, out, "output" if not args.report_only else "folder")
    except (ConfigError, LocationError) as err:
        return fail("study", err)
    if args.report_only:
        return _report(study, out, page, args, wall_seconds=None)
    if args.collect:
        wall = WallClock(study_dir(study)).total  # what the study's invocations have run
        return _report(study, out, page, args, wall_seconds=wall)
    if args.out and not args.quick:  # trials published by an earlier session are not retrained
        from clinfo_ray.study.run import adopt_published

        taken = adopt_published(study, out)
        if taken:
            print(f"{taken} trial(s) already published in {args.out}: not trained again")
    with WallClock(study_dir(study)) as clock:
        status = _train(study, args)
    if status != 0:
        return status
    return _report(study, out, page, args, wall_seconds=clock.total)


class WallClock:
    """The study's wall time over all its invocations, in ``wall_seconds.json`` in its folder:
    this invocation's time is added to what the earlier ones left, and the file is rewritten
    every ``every`` seconds while it runs, so an invocation killed outright (SIGKILL, the
    machine going away) loses at most that much."""

    def __init__(self, folder: str | Path, every: float = 30.0) -> None:
        import threading

        from clinfo_ray.storage import location as loc
        from clinfo_ray.study.run import WALL_FILE

        self.path = loc.join(folder, WALL_FILE)  # a local path or a URI
        self.every = every
        self.before = self._read()
        self.started = time.perf_counter()
        self.total = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _read(self) -> float:
        import json

        from clinfo_ray.storage import location as loc

        if not loc.is_file(self.path):
            return 0.0
        return float(json.loads(loc.read_text(self.path))["seconds"])

    def write(self) -> None:
        import json

        from clinfo_ray.storage import location as loc

        self.total = self.before + time.perf_counter() - self.started
        loc.write_text(self.path, json.dumps({"seconds": self.total}) + "\n")  # atomic

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.write()

    def __enter__(self) -> WallClock:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:  # an exception or Ctrl-C counts its time too
        self._stop.set()
        self._thread.join()
        self.write()


def _train(study: Study, args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError
    from clinfo_ray.data.write.sources.source_table import PrepareError
    from clinfo_ray.study.run import dataset_to_prepare, ensure_dataset
    from clinfo_ray.training.launch import check_before_ray
    from clinfo_ray.tuning.search import trial_resources

    try:
        # a source that is missing (Fashion-MNIST's files, npm) fails here, before Ray starts
        source = dataset_to_prepare(study)
        if source is None:
            for trial in study.grid():
                check_before_ray(study.trial_config(**trial))
    except (ConfigError, PrepareError) as err:
        return fail("study", err)
    except (FileNotFoundError, ValueError) as err:  # no dataset and no 'prepare' section
        return fail("study", f"data.dataset_dir: {err}")
    one_trial = trial_resources(study.base, gpu=False)["CPU"]
    connect_ray(args.address, cpus_needed=one_trial * (args.max_concurrent or 1))
    ensure_dataset(study, source)
    return _grid(study, args.max_concurrent)


def _grid(study: Study, max_concurrent: int | None) -> int:
    import ray

    from clinfo_ray.commands.common import fail
    from clinfo_ray.devices import ray_uses_gpu
    from clinfo_ray.study.run import folder_records, run_grid, study_dir, study_records
    from clinfo_ray.training.launch import with_absolute_paths
    from clinfo_ray.tuning.search import derived_max_concurrent

    study = dataclasses.replace(study, base=with_absolute_paths(study.base))
    gpu = ray_uses_gpu(study.base.run.device)
    concurrent = max_concurrent or derived_max_concurrent(study.base, ray.cluster_resources(), gpu)
    folder = study_dir(study)
    log.info(
        "study %s: %d methods x %d seeds, %d trial(s) at once, in %s",
        study.name,
        len(study.methods),
        len(study.seeds),
        concurrent,
        folder,
    )
    grid = run_grid(study, concurrent)
    records = study_records(study, folder_records(folder))
    errors = [r for r in grid if r.error is not None]
    for result in errors:
        log.error("trial failed: %s", str(result.error).splitlines()[0])
    missing = len(study.grid()) - len(records)
    if missing:
        return fail(
            "study",
            f"{missing} of {len(study.grid())} trials have no result "
            "(run the command again to resume them)",
            status=1,
        )
    return 0


def machine_line() -> str:
    """This machine in a few words: CPUs, memory, accelerator."""
    import os

    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    where = f"{platform.machine()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} CPUs, {memory:.0f} GiB, {gpu} ({where})"


def command_line(args: argparse.Namespace) -> str:
    """The command that trains this study, as a user types it (the page quotes it)."""
    words = ["clinfo-ray", "study", "--config", args.config]
    words += ["--quick"] * args.quick
    for flag, value in (("--out", args.out), ("--page", args.page)):
        words += [flag, value] if value else []
    for item in args.set:
        words += ["--set", item]
    return " ".join(shlex.quote(str(w)) for w in words)


def _report(
    study: Study, out: str, page: str, args: argparse.Namespace, wall_seconds: float | None
) -> int:
    """:func:`_write_report` at OUT; OUT in a bucket: in a local folder holding OUT's raw
    files (only those: OUT may be the study's folder), whose files are then uploaded."""
    import tempfile

    from clinfo_ray.storage import location as loc
    from clinfo_ray.study.run import RESULTS_FILE, SETTINGS_FILE

    if not loc.is_uri(out):
        status = _write_report(study, Path(out), Path(page), args, wall_seconds, out)
    else:
        with tempfile.TemporaryDirectory(prefix="clinfo-ray-study-") as scratch:
            local = Path(scratch)
            for name in (RESULTS_FILE, META_FILE, SETTINGS_FILE):
                if loc.is_file(loc.join(out, name)):
                    (local / name).write_bytes(loc.read_bytes(loc.join(out, name)))
            local_page = local / page[len(out) + 1 :]
            status = _write_report(study, local, local_page, args, wall_seconds, out)
            if status == 0:
                loc.upload_dir(local, out)
    if status == 0:
        print(f"results: {loc.join(out, RESULTS_FILE)}")
        print(f"page:    {page}")
    return status


def _write_report(
    study: Study,
    out: Path,
    page: Path,
    args: argparse.Namespace,
    wall_seconds: float | None,
    shown: str,
) -> int:
    """Copy the study's raw results to OUT (when elsewhere), record the run in meta.json, and
    write the page and plots from OUT's files alone (local folders; ``shown``: OUT as the
    user named it)."""
    import datetime
    import json

    from clinfo_ray.commands.common import fail
    from clinfo_ray.study.records import StudyMeta, read_meta, read_records
    from clinfo_ray.study.report import write_report
    from clinfo_ray.study.rules import read_first_test_read, updated_rules
    from clinfo_ray.study.run import (
        RESULTS_FILE,
        SETTINGS_FILE,
        folder_records,
        study_dir,
        study_records,
    )

    results = out / RESULTS_FILE
    meta_path = out / META_FILE
    if wall_seconds is not None:  # a run that trained: (re)write OUT's raw files
        records = study_records(study, folder_records(study_dir(study)))
        before = read_meta(meta_path).rules if meta_path.is_file() else {}
        out.mkdir(parents=True, exist_ok=True)
        results.write_text("".join(r.to_json() + "\n" for r in records))
        meta = StudyMeta(
            name=study.name,
            command=command_line(args),
            machine=machine_line(),
            date=datetime.date.today().isoformat(),
            wall_seconds=wall_seconds,
            metric=study.metric,
            methods=tuple((m.name, m.about) for m in study.methods),
            notes=study.notes,
            planned_trials=len(study.grid()),
            rules=updated_rules(before, read_first_test_read(study_dir(study)), study),
        )
        meta_path.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")
        if study.setting_search:  # the setting search's records, beside the study's
            found = read_records(study.setting_search)
            (out / SETTINGS_FILE).write_text("".join(r.to_json() + "\n" for r in found))
    if not (results.is_file() and meta_path.is_file()):
        return fail("study", f"--report-only: {shown} has no {RESULTS_FILE} and {META_FILE}")
    # what was measured comes from meta.json; the words (methods' descriptions, the notes, which
    # are written after the results are seen) from the study file as it is now
    measured = StudyMeta.from_dict(json.loads(meta_path.read_text()))
    rules = updated_rules(measured.rules, {}, study)
    if rules != measured.rules:  # the rules changed since: the raw record says so, and when
        measured = dataclasses.replace(measured, rules=rules)
        meta_path.write_text(json.dumps(measured.to_dict(), indent=2, sort_keys=True) + "\n")
    meta = dataclasses.replace(
        measured,
        methods=tuple((m.name, m.about) for m in study.methods),
        notes=study.notes,
    )
    records = read_records(results)
    settings = read_records(out / SETTINGS_FILE)  # [] when the study shows no setting search
    if any(r.setting for r in records):  # a setting search's own page
        records, settings = [], records
    write_report(records, list(study.claims), meta, out, page, setting_records=settings)
    return 0
