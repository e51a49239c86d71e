"""Which combinations `featstore probe` fits: a request expanded into one ProbeSpec per dataset, layer set,
aggregation, probe and seed, checked against what the catalog says is built (no array is opened)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from featstore.catalog.database import catalog_reader
from featstore.catalog.features import complete_layer_counts
from featstore.catalog.names import built_models, catalog_dataset_names, unknown_model
from featstore.catalog.probe_records import baselines
from featstore.errors import FeatstoreError
from featstore.probing.families import CONTROLS, FAMILIES
from featstore.probing.specs import (
    LAST_TOKEN,
    LENGTH_AGGREGATION,
    LENGTH_FEATURE,
    ROWS_AGGREGATION,
    BaseSetting,
    ProbeSpec,
    Stack,
)
from featstore.project import Project
from featstore.views.aggregations import parse_aggregation
from featstore.views.view import layer_indices
from probes.families import MATRIX, ROWS, STACK


@dataclass(frozen=True)
class ProbeRequest:
    """What `featstore probe` asks for, before it is expanded into one ProbeSpec per combination."""

    model: str
    datasets: list[str] | None = None
    feature: str = "attn"
    layers: list[str] | None = None
    aggregations: list[str] | None = None
    probes: list[str] = field(default_factory=lambda: ["logreg"])
    seed: int = 0
    seeds: int = 1
    control: str = ""
    baseline: bool = False
    baseline_layer: int | None = None
    hard_threshold: float | None = None
    each_layer: bool = False


def plan_specs(project: Project, request: ProbeRequest) -> list[ProbeSpec]:
    """The combinations of a request: its datasets (default: all built for the model; the hard subset when a
    threshold is given) times aggregations times probes, or one baseline per dataset; each fitted with `seeds`
    seeds from `seed` on (every probe holds out a seeded validation set), as the control if one is named."""
    if request.seeds < 1:
        raise FeatstoreError(f"--seeds must be at least 1, not {request.seeds}")
    if request.control not in ("", *CONTROLS):
        raise FeatstoreError(f"unknown control {request.control!r}; choose from {', '.join(CONTROLS)}")
    single = [replace(spec, control=request.control) for spec in _single_seed_specs(project, request)]
    return [replace(spec, seed=request.seed + k) for spec in single for k in range(request.seeds)]


def _single_seed_specs(project: Project, request: ProbeRequest) -> list[ProbeSpec]:
    """`plan_specs` for the request's first seed, without a control."""
    with catalog_reader(project) as con:
        n_layers = complete_layer_counts(con, request.model)
    if not n_layers:
        raise unknown_model(request.model, built_models(project))
    datasets = catalog_dataset_names(project).resolve_all(request.datasets) if request.datasets else list(n_layers)
    missing = [d for d in datasets if d not in n_layers]
    if missing:
        raise FeatstoreError(
            f"no complete features of {', '.join(missing)} for model {request.model!r}; "
            f"run `featstore build --model {request.model} --datasets {' '.join(missing)}` first"
        )
    if request.hard_threshold is not None:
        datasets = hard_datasets(project, request.model, datasets, request.hard_threshold)
    if request.baseline:
        flags = (
            ("--feature", request.feature != "attn"),
            ("--layers", request.layers),
            ("--each-layer", request.each_layer),
            ("--aggregation", request.aggregations),
            ("--probe", request.probes != ["logreg"]),
        )
        ignored = [flag for flag, given in flags if given]
        if ignored:
            raise FeatstoreError(
                f"--baseline fits the SAE-Probes baseline only (last-token residual, logreg); "
                f"drop {', '.join(ignored)} or run them separately"
            )
        return [
            baseline_spec(request.model, dataset, n_layers[dataset], request.baseline_layer, request.seed)
            for dataset in datasets
        ]
    aggregations = aggregation_names(request.feature, request.aggregations)
    if request.feature == LENGTH_FEATURE and (request.layers or request.each_layer):
        raise FeatstoreError("--layers and --each-layer do not apply to --feature length (it reads seq_len only)")
    inputs = {FAMILIES[probe].input for probe in request.probes}
    if inputs - {MATRIX} and request.feature != "attn":
        raise FeatstoreError("--probe attention-row and meta read attention rows: use them with --feature attn")
    specs = []
    for dataset in datasets:
        layers = (
            ()
            if request.feature == LENGTH_FEATURE
            else resolve_layers(n_layers[dataset], request.model, request.layers)
        )
        layer_sets = [(layer,) for layer in layers] if request.each_layer else [layers]
        for probe in dict.fromkeys(request.probes):
            kind = FAMILIES[probe].input
            if kind == ROWS:
                specs += [
                    ProbeSpec(dataset, request.model, "attn", layer_set, ROWS_AGGREGATION, probe, request.seed)
                    for layer_set in layer_sets
                ]
            elif kind == STACK:
                stack = Stack(tuple(BaseSetting(s, a) for s in layer_sets for a in aggregations))
                specs.append(ProbeSpec(dataset, request.model, "attn", layers, stack, probe, request.seed))
            else:
                specs += [
                    ProbeSpec(dataset, request.model, request.feature, layer_set, aggregation, probe, request.seed)
                    for layer_set in layer_sets
                    for aggregation in aggregations
                ]
    return specs


def aggregation_names(feature: str, requested: list[str] | None) -> list[str]:
    """Canonical aggregation names: token aggregations for attn (default `first`), fixed ones for resid and length."""
    fixed = {"resid": LAST_TOKEN, LENGTH_FEATURE: LENGTH_AGGREGATION}
    if feature in fixed:
        if requested:
            raise FeatstoreError(f"--aggregation applies to --feature attn; {feature} takes none")
        return [fixed[feature]]
    return list(dict.fromkeys(parse_aggregation(spec)[0] for spec in requested or ["first"]))


def resolve_layers(n_layers: int, model: str, layers: list[str] | None) -> tuple[int, ...]:
    """Layer indices of a model with `n_layers` layers from `all`, integers, or negative integers counted from
    the end."""
    if not layers or layers == ["all"]:
        return tuple(range(n_layers))
    try:
        numbers = [int(layer) for layer in layers]
    except ValueError:
        raise FeatstoreError(f"--layers takes 'all' or layer numbers, not {' '.join(layers)!r}") from None
    return tuple(sorted(set(layer_indices(numbers, n_layers, model))))


def baseline_spec(model: str, dataset: str, n_layers: int, layer: int | None, seed: int) -> ProbeSpec:
    """The SAE-Probes baseline of a dataset: logistic regression on the last-token residual at one layer
    (default: the middle)."""
    chosen = layer_indices([n_layers // 2 if layer is None else layer], n_layers, model)
    return ProbeSpec(dataset, model, "resid", tuple(chosen), LAST_TOKEN, "logreg", seed, baseline=True)


def hard_datasets(project: Project, model: str, datasets: list[str], threshold: float) -> list[str]:
    """The datasets whose baseline test AUC is below `threshold` (the SAE-Probes hard subset)."""
    with catalog_reader(project) as con:
        found = baselines(con, model)
    missing = sorted(set(datasets) - set(found["dataset"]))
    if missing:
        raise FeatstoreError(
            f"no baseline for {', '.join(missing)} under {model}; run `featstore probe --baseline` first"
        )
    hard = set(found.loc[found["roc_auc"] < threshold, "dataset"])
    return [d for d in datasets if d in hard]
