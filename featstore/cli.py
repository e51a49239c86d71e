"""The `featstore` command: argument parsing and the thin handlers that call the library."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from featstore import __version__
from featstore.catalog.database import damaged_catalog
from featstore.catalog.safe_sql import DEFAULT_MAX_ROWS, EXAMPLE_QUERY, SQL_COMMAND_HELP, run_bounded_query
from featstore.catalog.splits import SplitParams
from featstore.cluster import CLUSTER_HELP, local_workers
from featstore.errors import FeatstoreError
from featstore.extraction.captures import CAPTURES, capture_help
from featstore.extraction.model_sources import model_spec_help
from featstore.probing.families import CONTROLS, FAMILIES
from featstore.probing.specs import HARD_THRESHOLD
from featstore.project import Project, init_project, open_project
from featstore.store.location import as_store_error
from featstore.views.aggregations import aggregation_help

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors become one line on stderr and a non-zero exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = warn_once_per_message(set())
    try:
        args.handler(args)
    except FeatstoreError as err:
        print(f"featstore: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("featstore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:  # a full disk or quota, wherever the write was (pandas, zarr's writer thread, ...)
        mapped = as_store_error(err, args.store or "of this project")
        if mapped is not None:
            print(f"featstore: error: {mapped}", file=sys.stderr)
            return EXIT_ERROR
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"featstore: error: no space left on device{f' writing {err.filename}' if err.filename else ''}; "
            "free some space and run the command again",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as err:  # an object store's failure raised inside zarr or s3fs, a damaged catalog
        mapped = as_store_error(err, args.store or "of this project") or damaged_catalog(err)
        if mapped is None:
            raise
        print(f"featstore: error: {mapped}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def warn_once_per_message(seen: set[str]) -> Callable[..., None]:
    """A `warnings.showwarning` printing each distinct warning once, as one `featstore: warning:` line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = f"featstore: warning: {category.__name__}: {' '.join(str(message).split())}"
        if text not in seen:
            seen.add(text)
            print(text, file=sys.stderr)

    return show


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featstore",
        description="An activation cache for probing attention: register datasets, build last-token attention "
        "and residual features into Zarr, select examples with SQL, fit probes.",
        epilog="Typical run: featstore datasets import-sae-probes; featstore build --model smollm2-135m "
        "--datasets 87_glue_cola --limit 500; featstore probe --model smollm2-135m --baseline; featstore results",
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="project directory (default: the current one)")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="where features and probe files live: a folder or an "
        "object-store URL such as s3://bucket/prefix (default: $FEATSTORE_STORE, else the project's "
        "featstore.toml, else <root>/store)",
    )
    parser.add_argument("--version", action="version", version=f"featstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create an empty project directory")
    init.add_argument("directory", nargs="?", type=Path, help="where (default: --root)")
    init.add_argument(
        "--store",
        dest="init_store",
        metavar="URL",
        help="keep features in this folder or bucket (written to featstore.toml)",
    )
    init.set_defaults(handler=run_init)

    clone = commands.add_parser(
        "clone",
        help="a working project from a store URL: registry, datasets and catalog downloaded, features read in place",
    )
    clone.add_argument("url", help="the store, e.g. s3://bucket/prefix")
    clone.add_argument("directory", type=Path, help="a new project directory")
    clone.set_defaults(handler=run_clone)

    datasets = commands.add_parser("datasets", help="the dataset registry").add_subparsers(
        dest="datasets_command", required=True, metavar="SUBCOMMAND"
    )
    clean = datasets.add_parser("clean", help="turn raw files and registry rows into cleaned files and catalog rows")
    clean.add_argument("--overwrite", action="store_true", help="rebuild datasets whose inputs are unchanged too")
    clean.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets (default: all)")
    add_yes_option(clean)
    add_split_options(clean)
    clean.set_defaults(handler=run_clean)

    sae = datasets.add_parser("import-sae-probes", help="register and clean the SAE-Probes binary datasets")
    sae.add_argument(
        "--source", type=Path, help="a sae-probes wheel or directory (default: installed, else pip download)"
    )
    sae.add_argument("--only", nargs="+", metavar="NAME", help="only these datasets (name, tag or number)")
    sae.add_argument("--overwrite", action="store_true", help="re-clean datasets whose inputs are unchanged too")
    add_yes_option(sae)
    add_split_options(sae)
    sae.set_defaults(handler=run_import_sae_probes)

    listing = datasets.add_parser(
        "list", help="print each dataset's size, class balance, prompt lengths and the models whose features are built"
    )
    listing.set_defaults(handler=run_list)

    build = commands.add_parser("build", help="extract attention rows and residuals into the feature store")
    build.add_argument(
        "--model", required=True, help=model_spec_help() + " (required, as for probe: no default that fails offline)"
    )
    build.add_argument("--datasets", nargs="+", metavar="NAME", help="datasets to build (default: all in the catalog)")
    build.add_argument("--max-len", type=int, help="keep the last N tokens (default: the model's context)")
    build.add_argument(
        "--batch-tokens",
        type=int,
        help="padded tokens per batch (default: 2048 on CPU; on a GPU a power of two from 8192 to "
        "65536 that fits half its free memory)",
    )
    build.add_argument("--limit", type=int, help="at most N examples per split, classes alternating (for quick runs)")
    build.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    build.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="the model's compute dtype (stored arrays are float16 either way)",
    )
    build.add_argument("--capture", choices=list(CAPTURES), help=capture_help())
    build.add_argument("--overwrite", action="store_true", help="rebuild splits that are already built")
    build.add_argument(
        "--repair",
        action="store_true",
        help="also rebuild what `featstore verify` finds damaged: only the damaged shards where it can",
    )
    build.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help=CLUSTER_HELP + "; each worker loads the model once and "
        "writes whole shards into the store (a bucket, or a folder every worker reaches at the same path)",
    )
    build.set_defaults(handler=run_build)

    verify = commands.add_parser(
        "verify",
        help="check the stored features file by file against their checksums",
        description="Check every complete split's files against the checksums recorded "
        "when they were written. Prints each damaged file and exits 1 with the command "
        "that rebuilds them; quiet when all match.",
    )
    verify.add_argument("--model", help="only this model")
    verify.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets")
    verify.set_defaults(handler=run_verify)

    probe = commands.add_parser("probe", help="fit probes on train splits and score them on test splits")
    probe.add_argument("--model", required=True, help="the model key the features were built with")
    probe.add_argument("--datasets", nargs="+", metavar="NAME", help="default: every dataset built for the model")
    probe.add_argument(
        "--feature",
        choices=["attn", "resid", "length"],
        default="attn",
        help="attn: aggregated attention rows; resid: last-token residual; length: the length-only "
        "control, log(seq_len) and its square (default: %(default)s)",
    )
    probe.add_argument(
        "--layers", nargs="+", metavar="L", help="'all' (default) or layer numbers; negative ones count from the end"
    )
    probe.add_argument(
        "--each-layer", action="store_true", help="one probe per layer of --layers instead of one over all"
    )
    probe.add_argument(
        "--aggregation", nargs="+", metavar="SPEC", help=f"for attn (default: first): {aggregation_help()}"
    )
    probe.add_argument(
        "--probe",
        nargs="+",
        choices=list(FAMILIES),
        default=["logreg"],
        dest="probes",
        metavar="PROBE",
        help="; ".join(f"{name}: {family.summary}" for name, family in FAMILIES.items()) + " (default: logreg)",
    )
    probe.add_argument("--seed", type=int, default=0, help="the first seed (default: %(default)s)")
    probe.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        metavar="N",
        help="fit each combination with N seeds, --seed to --seed + N - 1 (the validation holdout, a "
        "learned probe's initialisation and batch order); results average them (default: %(default)s)",
    )
    probe.add_argument(
        "--control",
        choices=list(CONTROLS),
        help="shuffled-labels: fit the same probes on permuted training labels (seeded); their test "
        "AUC should sit near 0.5",
    )
    probe.add_argument(
        "--baseline",
        action="store_true",
        help="fit the SAE-Probes baseline: logistic regression on the last-token residual at one layer",
    )
    probe.add_argument("--baseline-layer", type=int, help="the baseline's layer (default: the middle one)")
    probe.add_argument(
        "--hard", action="store_true", help="only datasets whose baseline test AUC is below the threshold"
    )
    probe.add_argument("--hard-threshold", type=float, default=HARD_THRESHOLD)
    probe.add_argument("--overwrite-train", action="store_true", help="refit combinations already in probe_results")
    probe.add_argument(
        "--overwrite-eval", action="store_true", help="re-score saved probes on the test split, without refitting"
    )
    probe.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="fit independent combinations in N processes (default: by the number of fits and CPUs)",
    )
    probe.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help=CLUSTER_HELP + "; each fit is a task that reads the "
        "store (a bucket, or a folder every worker reaches at the same path); --jobs does not apply",
    )
    probe.set_defaults(handler=run_probe)

    results = commands.add_parser(
        "results", help="print test ROC AUC: dataset by probe, feature, layers and aggregation"
    )
    results.add_argument("--model", help="only this model")
    results.add_argument("--datasets", nargs="+", metavar="NAME")
    results.add_argument("--ci", action="store_true", help="show each AUC with its stored 95%% DeLong interval")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.add_argument(
        "--vs",
        metavar="REFERENCE",
        help="compare every setting with REFERENCE on the same test examples: baseline, length or a "
        "setting's label; shows ΔAUC with its paired DeLong 95%% interval, p-value and Holm-adjusted "
        "p across datasets, and per setting the mean ΔAUC over datasets",
    )
    results.add_argument(
        "--settings", metavar="PATTERN", help="only settings whose label matches this glob, e.g. '*bins*'"
    )
    results.add_argument(
        "--sort",
        choices=["setting", "auc"],
        default="setting",
        help="setting: baseline, controls, then by feature, layers, aggregation (default); auc: by mean "
        "AUC, best first",
    )
    results.set_defaults(handler=run_results)

    report = commands.add_parser(
        "report",
        help="write the static report site (overview, datasets, examples, store)",
        description="Write a static site of what the probes found (offline: no CDN), "
        "replacing the folder atomically. Serve it with `python -m http.server -d report` "
        "or --serve.",
    )
    report.add_argument("--model", nargs="+", dest="models", metavar="MODEL", help="default: every model with features")
    report.add_argument("--datasets", nargs="+", metavar="NAME", help="default: every dataset built for the models")
    report.add_argument("--out", type=Path, help="where to write the site (default: <root>/report)")
    report.add_argument(
        "--hard-threshold",
        type=float,
        default=HARD_THRESHOLD,
        help="baseline AUC below which a dataset is marked hard (default: %(default)s)",
    )
    report.add_argument("--serve", action="store_true", help="after writing, serve the site on 127.0.0.1 until Ctrl-C")
    report.add_argument(
        "--port", type=int, default=8000, help="port for --serve (default: %(default)s; 0 picks a free one)"
    )
    report.set_defaults(handler=run_report)

    sql = commands.add_parser("sql", help=SQL_COMMAND_HELP)
    sql.add_argument("query", help=f'for example "{EXAMPLE_QUERY}"')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument(
        "--max-rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS,
        help="refuse results with more rows than this (default: %(default)s)",
    )
    sql.set_defaults(handler=run_sql)
    return parser


def add_yes_option(parser: argparse.ArgumentParser) -> None:
    """--yes: drop the built work of datasets whose examples changed without asking (for scripts)."""
    parser.add_argument(
        "--yes",
        action="store_true",
        help="drop the features and probe results of datasets whose examples changed without asking "
        "(they are listed first; without --yes a terminal is asked, and a run without one refuses)",
    )


def confirm_drops(assume_yes: bool) -> Callable[[list], bool]:
    """The confirmation of a clean's drops: each listed on stderr, then --yes, a y/N question on a terminal, or
    (stdin not a terminal: a script) a one-line refusal naming --yes. Nothing is written before it answers."""

    def confirm(drops: list) -> bool:
        for drop in drops:
            print(f"featstore: examples changed, would drop {drop.describe()}", file=sys.stderr)
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            raise FeatstoreError(
                f"{len(drops)} changed dataset(s) would lose the features and probe results listed "
                "above; nothing was changed: pass --yes to drop them"
            )
        print("Drop them? [y/N] ", end="", file=sys.stderr, flush=True)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return confirm


def report_clean(outcome, what: str) -> None:
    """Say on stderr what a clean dropped (dataset, splits, results, bytes freed), or that it changed nothing."""
    from featstore.sizes import format_bytes

    for drop in outcome.dropped:
        splits = ", ".join(f"{model} {split}" for model, split in drop.splits) or "no features"
        print(
            f"featstore: dropped {drop.dataset}: {splits}; {len(drop.results)} probe result(s); "
            f"{format_bytes(drop.nbytes)} freed",
            file=sys.stderr,
        )
    if not outcome.cleaned:
        print(f"featstore: nothing to do: {what} (--overwrite re-cleans them)", file=sys.stderr)
    elif not outcome.changed:
        print(
            f"featstore: re-cleaned {len(outcome.cleaned)} dataset(s): no train or test example changed, "
            "features and probe results kept",
            file=sys.stderr,
        )


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """The options that change how datasets are split (clean and import take them)."""
    defaults = SplitParams()
    group = parser.add_argument_group("splits (the SAE-Probes protocol by default)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="split seed (default: %(default)s)")
    group.add_argument(
        "--max-examples",
        type=int,
        default=defaults.max_examples,
        help="examples kept per dataset (default: %(default)s)",
    )
    group.add_argument(
        "--max-train",
        type=int,
        default=defaults.max_train,
        help="train examples at most, half positive (default: %(default)s)",
    )
    group.add_argument(
        "--min-test", type=int, default=defaults.min_test, help="test examples at least (default: %(default)s)"
    )


def split_params(args: argparse.Namespace) -> SplitParams:
    """The split options as SplitParams, refusing non-positive sizes."""
    for name in ("max_examples", "max_train", "min_test"):
        if getattr(args, name) < 1:
            raise FeatstoreError(f"--{name.replace('_', '-')} must be at least 1")
    return SplitParams(args.seed, args.max_examples, args.max_train, args.min_test)


def project_of(args: argparse.Namespace) -> Project:
    """The project named by --root, with its store overridden by --store."""
    return open_project(args.root, args.store)


def reading_project(args: argparse.Namespace) -> Project:
    """The project of a read-only command, its catalog and datasets first brought up to a newer generation in
    a shared store (another machine's rebuild moved splits to versions only the newer catalog names)."""
    from featstore.session.mirror import refresh

    project = project_of(args)
    refresh(project)
    return project


def run_init(args: argparse.Namespace) -> None:
    try:
        init_project(args.directory or args.root, args.init_store or args.store)
    except OSError as err:
        raise FeatstoreError(f"cannot create a project at {args.directory or args.root}: {err.strerror}") from None


def run_clone(args: argparse.Namespace) -> None:
    from featstore.session.mirror import clone

    clone(args.url, args.directory)


def run_clean(args: argparse.Namespace) -> None:
    from featstore.datasets.cleaning import clean_datasets
    from featstore.datasets.registry import load_registry, select_entries

    project = project_of(args)
    entries = select_entries(load_registry(project), args.datasets)
    outcome = clean_datasets(
        project, entries, split_params(args), overwrite=args.overwrite, confirm=confirm_drops(args.yes)
    )
    report_clean(outcome, "every dataset is cleaned from its current registry row and raw file")


def run_import_sae_probes(args: argparse.Namespace) -> None:
    from featstore.datasets.sae_probes import import_sae_probes

    outcome = import_sae_probes(
        project_of(args),
        args.source,
        args.only,
        split_params(args),
        overwrite=args.overwrite,
        confirm=confirm_drops(args.yes),
    )
    report_clean(outcome, "every dataset is already imported and cleaned")


def run_list(args: argparse.Namespace) -> None:
    from featstore.catalog.database import catalog_reader
    from featstore.catalog.datasets import dataset_listing

    with catalog_reader(reading_project(args)) as con:
        frame = dataset_listing(con)
    print_frame(frame, "table")


def run_build(args: argparse.Namespace) -> None:
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings

    if args.cluster:
        local_workers(args.cluster)  # a local:N this machine cannot hold is refused before any work
    for name in ("max_len", "batch_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise FeatstoreError(f"--{name.replace('_', '-')} must be at least 1")
    settings = BuildSettings(
        max_len=args.max_len,
        batch_tokens=args.batch_tokens,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        repair=args.repair,
        capture=args.capture,
    )
    if not build_features(project_of(args), args.model, args.datasets, settings, cluster=args.cluster):
        print(
            f"featstore: nothing to do: every requested split is already built for {args.model}"
            f"{'' if args.repair else ' (--overwrite rebuilds, --repair fixes what verify finds damaged)'}",
            file=sys.stderr,
        )


def run_verify(args: argparse.Namespace) -> None:
    from featstore.verify import verify_store

    damaged, commands = verify_store(reading_project(args), args.model, args.datasets)
    for damage in damaged:
        for problem in damage.problems:
            print(f"{damage.split}: {problem}")
    if damaged:
        raise FeatstoreError(f"{len(damaged)} damaged split(s); rebuild them with `{'`; `'.join(commands)}`")


def run_probe(args: argparse.Namespace) -> None:
    from featstore.probing.plan import ProbeRequest, plan_specs
    from featstore.probing.runner import run_probes

    if args.cluster:
        local_workers(args.cluster)
    project = project_of(args)
    request = ProbeRequest(
        model=args.model,
        datasets=args.datasets,
        feature=args.feature,
        layers=args.layers,
        aggregations=args.aggregation,
        probes=args.probes,
        seed=args.seed,
        seeds=args.seeds,
        control=args.control or "",
        baseline=args.baseline,
        baseline_layer=args.baseline_layer,
        hard_threshold=args.hard_threshold if args.hard else None,
        each_layer=args.each_layer,
    )
    specs = plan_specs(project, request)
    written = run_probes(
        project,
        specs,
        overwrite_train=args.overwrite_train,
        overwrite_eval=args.overwrite_eval,
        jobs=args.jobs,
        cluster=args.cluster,
    )
    if written.empty:
        print(
            f"featstore: nothing to do: every one of the {len(specs)} combination(s) is already in probe_results "
            "(--overwrite-train refits, --overwrite-eval re-scores)",
            file=sys.stderr,
        )


def run_results(args: argparse.Namespace) -> None:
    from featstore.catalog.database import upgrade_catalog
    from featstore.probing.results import by_mean_auc, matching_settings, result_rows, results_table, results_text

    project = reading_project(args)
    upgrade_catalog(project)
    everything = result_rows(project, args.model, args.datasets)
    rows = matching_settings(everything, args.settings) if args.settings is not None else everything
    if args.sort == "auc":
        rows = by_mean_auc(rows)
    if args.vs is not None:
        from featstore.probing.compare import comparisons_text, paired_comparisons, reference_setting

        reference = everything[reference_setting(everything, args.vs)]  # even when --settings leaves it out
        comparisons = paired_comparisons(project, pd.concat([rows, reference]).drop_duplicates("result_id"), args.vs)
        if args.format == "table":
            print(comparisons_text(comparisons, width=shutil.get_terminal_size((120, 24)).columns))
        else:
            print_frame(comparisons, args.format)
        return
    if args.format == "table":
        print(results_text(rows, ci=args.ci, width=shutil.get_terminal_size((120, 24)).columns))
    else:
        print_frame(results_table(rows, ci=args.ci), args.format)


def run_report(args: argparse.Namespace) -> None:
    from featstore.report.site import serve, write_report

    if not 0 <= args.port <= 65535:
        raise FeatstoreError(f"--port must be 0..65535, not {args.port}")
    summary = write_report(reading_project(args), args.models, args.datasets, args.out, args.hard_threshold)
    if args.serve:
        serve(summary.folder, args.port)


def run_sql(args: argparse.Namespace) -> None:
    print_frame(run_bounded_query(reading_project(args).catalog_path, args.query, args.max_rows), args.format)


def print_frame(frame: pd.DataFrame, fmt: str) -> None:
    """Write a result to stdout as an aligned table, CSV or JSON records."""
    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(frame.to_string(index=False) if len(frame) else "(no rows)")


if __name__ == "__main__":
    sys.exit(main())
