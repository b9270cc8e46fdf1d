"""One MOCCA run from the command line, without Ray: for debugging and for comparing single runs.

    python -m engine.train --dataset digits --normal-class 3
    python -m engine.train --dataset cifar10 --data-root ~/data --normal-class cat --layers 0,1,2,3 --budget paper

Settings start from the dataset's search space at `--budget` (epochs, batch size, model, ...) and every flag
given overrides them. Prints the test AUC, maxBA and each layer's AUC, next to the OC-SVM and Isolation Forest
baselines on the same split; `--json` prints one machine-readable line instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from engine.cli import Parser
from engine.data import DATASETS, DatasetError, class_names, dataset_module
from engine.data.base import resolve_class
from engine.trial import BASELINES, TrialResult, TrialSpec, run_trial
from search_spaces import get_space, str_to_layers


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip()) if text else ()


def _layers(text: str) -> tuple[int, ...]:
    try:
        return str_to_layers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers like 0,1,3, got {text!r}") from None


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"data options look like KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engine.train",
        description="Train and evaluate one MOCCA model (both stages) and the classic baselines on one class.",
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", choices=sorted(DATASETS), help="dataset")
    d.add_argument("--data-root", help="folder holding the dataset (not needed for digits)")
    d.add_argument("--normal-class", default="0", help="the normal class, by index or name (e.g. 3 or cat)")
    d.add_argument(
        "--selection",
        default="val",
        choices=("val", "test"),
        help="val: report on the test split minus a validation split; test: the paper's protocol",
    )
    d.add_argument(
        "--custom-dataset",
        action="store_true",
        help="the folder holds a custom set in the official format: skip the official checksums",
    )
    d.add_argument("--download", action="store_true", help="download the dataset when missing (needs a network)")
    d.add_argument(
        "--data-option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="dataset-specific setting, e.g. image_size=64 (repeatable)",
    )
    m = p.add_argument_group("model and objective")
    m.add_argument(
        "--budget",
        default="smoke",
        choices=("smoke", "paper"),
        help="start from the search space's settings at this budget; flags below override",
    )
    m.add_argument("--model", help="registered model name (default: the dataset's)")
    m.add_argument("--code-size", type=int, help="size of the code (last encoder layer)")
    m.add_argument(
        "--layers", type=_layers, help="encoder layers pulled to a centroid, 0 = closest to the input (default: all)"
    )
    m.add_argument("--boundary", default="soft", choices=("soft", "hard"), help="hypersphere boundary")
    m.add_argument("--nu", type=float, default=0.1, help="soft boundary's outlier fraction, in (0, 1]")
    m.add_argument("--warmup-epochs", type=int, help="one-class epochs before the radius is updated")
    m.add_argument("--plain-l2", action="store_true", help="score with the plain L2 distance instead of squared")
    t = p.add_argument_group("training")
    t.add_argument("--ae-epochs", type=int, help="stage 1 (autoencoder) epochs")
    t.add_argument("--ae-lr", type=float, help="stage 1 learning rate")
    t.add_argument("--ae-weight-decay", type=float, help="stage 1 Adam weight decay")
    t.add_argument("--ae-milestones", type=_ints, help="stage 1 epochs at which the lr drops 10x, e.g. 250")
    t.add_argument("--oc-epochs", type=int, help="stage 2 (one-class) epochs")
    t.add_argument("--oc-lr", type=float, help="stage 2 learning rate")
    t.add_argument("--oc-weight-decay", type=float, help="stage 2 Adam weight decay")
    t.add_argument("--oc-milestones", type=_ints, help="stage 2 epochs at which the lr drops 10x, e.g. 50")
    t.add_argument("--batch-size", type=int, help="batch size of both stages")
    t.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 = autocast matmuls/convs")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and augmentation")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument(
        "--memory-format",
        default="auto",
        choices=("auto", "contiguous", "channels_last"),
        help="layout of images and conv weights; auto = the faster one measured for the device type",
    )
    t.add_argument(
        "--compile", action="store_true", help="torch.compile the training steps (pays off over long or many runs)"
    )
    o = p.add_argument_group("output")
    o.add_argument("--no-baselines", action="store_true", help="skip the OC-SVM and Isolation Forest baselines")
    o.add_argument("--json", action="store_true", help="print one JSON line per run instead of a table")
    return p


_OVERRIDES = (
    "model", "code_size", "layers", "warmup_epochs", "ae_epochs", "ae_lr", "ae_weight_decay", "ae_milestones",
    "oc_epochs", "oc_lr", "oc_weight_decay", "oc_milestones", "batch_size",
)  # fmt: skip


def spec_from_args(args: argparse.Namespace) -> TrialSpec:
    """TrialSpec from the search space's fixed settings at the budget, overridden by the flags given."""
    module = dataset_module(args.dataset)
    normal_class = resolve_class(args.normal_class, tuple(module.CLASSES), args.dataset)
    fields = dict(get_space(args.dataset).fixed(args.budget, normal_class))
    fields.update({k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None})
    options = dict(fields.pop("data_options", ()))
    options.update(dict(args.data_option))
    if args.custom_dataset:
        options["custom"] = True
    if args.download:
        options["download"] = True
    if args.plain_l2:
        fields["squared_scores"] = False
    fields.update(
        normal_class=normal_class,
        boundary=args.boundary,
        nu=args.nu,
        precision=args.precision,
        selection=args.selection,
        seed=args.seed,
        device=args.device,
        memory_format=args.memory_format,
        compile=args.compile,
        data_root=args.data_root,
        data_options=tuple(sorted(options.items())),
    )
    return TrialSpec(**fields).validate()


def _fmt(value: float) -> str:
    return "  —  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def print_result(result: TrialResult, out=None) -> None:
    out = out or sys.stdout
    row = result.row
    name = "MOCCA" if row["method"] == "mocca" else {"ocsvm": "OC-SVM", "iforest": "IsolationForest"}[row["method"]]
    if row["method"] == "mocca":
        name += f" ({row['boundary']}, layers {','.join(map(str, row['layers']))})"
    line = f"{name:<40} test AUC {_fmt(row.get('test_auc'))}  maxBA {_fmt(row.get('test_max_ba'))}"
    line += f"  val AUC {_fmt(row.get('val_auc'))}  [{row['status']}] {row.get('total_s', 0):.1f}s"
    print(line, file=out)
    if row["status"] != "ok":
        print(f"    {row['error']}", file=out)
    for k, auc in zip(row.get("layers", []), row.get("layer_test_auc", []), strict=False):
        print(f"    layer {k} alone: test AUC {_fmt(auc)}", file=out)
    if row["method"] == "mocca" and row["status"] == "ok":
        print(
            f"    stage 1 {row['ae_images_per_s']:.0f} img/s, stage 2 {row['oc_images_per_s']:.0f} img/s on "
            f"{row['device']}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        specs = [spec]
        if not args.no_baselines:
            specs += [TrialSpec(**{**spec.__dict__, "method": m}) for m in BASELINES]
        if not args.json:
            names = class_names(spec.dataset)
            print(f"{spec.dataset}: normal class {spec.normal_class} ({names[spec.normal_class]}), "
                  f"seed {spec.seed}, selection on {spec.selection}")  # fmt: skip
        for s in specs:
            result = run_trial(s)
            if args.json:
                print(json.dumps(result.row, default=str))
            else:
                print_result(result)
    except (DatasetError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
