"""analysis: tables, paired tests and the HTML report, on a store written by real (tiny) digits runs.

The store is built once per module (tests/fixtures/analysis_store.py, no Ray, ~40 runs of well under a second).
Expected values are computed here straight from the store's DataFrame, not through analysis.runs.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from plotly.offline import get_plotlyjs
from scipy.stats import wilcoxon

from analysis import report, stats, tables
from analysis.paper import load_paper, paper_table
from analysis.runs import class_average, open_sweep, reported_runs
from results import ResultsStore
from tests.fixtures.analysis_store import (
    ABLATION,
    CLASSES,
    build_digits_sweep,
    fake_row,
    write_fake_cifar10,
    write_fake_mvtec_and_shanghaitech,
)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# figures of the digits report: per-class AUC and maxBA, one ablation, CDFs soft and hard, search history and
# importances, training curves, cost (durations, phases, throughput)
DIGITS_FIGURES = 2 + 1 + 2 + 2 + 1 + 3


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory) -> str:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("sweeps") / "digits")
    build_digits_sweep(root)
    torch.set_num_threads(previous)
    return root


@pytest.fixture(scope="module")
def digits_tables(digits_sweep) -> dict[str, tables.Table]:
    return {t.key: t for t in tables.build_tables(open_sweep(digits_sweep))}


@pytest.fixture(scope="module")
def raw(digits_sweep) -> pd.DataFrame:
    runs = ResultsStore(digits_sweep).load()
    runs["layer_set"] = [",".join(map(str, ls)) for ls in runs["layers"]]
    return runs


def _selected(digits_sweep, cls: int, boundary: str) -> dict:
    return ResultsStore(digits_sweep).read_json(f"selected/digits-{cls}-{boundary}.json")


def _expected_rows(raw: pd.DataFrame, digits_sweep: str, cls: int, label: str) -> pd.DataFrame:
    """The runs behind one cell, found without analysis.runs: selection config, its twin (same learning rates,
    layers = [3]) or the baseline's runs."""
    if label in ("OC-SVM", "Isolation Forest"):
        method = "ocsvm" if label == "OC-SVM" else "iforest"
        return raw[(raw["method"] == method) & (raw["normal_class"] == cls)]
    boundary = "soft" if "soft" in label else "hard"
    selected = raw[raw["config_key"] == _selected(digits_sweep, cls, boundary)["config_key"]]
    if not label.endswith("last layer"):
        return selected
    first = selected.iloc[0]
    return raw[
        (raw["method"] == "mocca") & (raw["normal_class"] == cls) & (raw["boundary"] == boundary)
        & (raw["ae_lr"] == first["ae_lr"]) & (raw["oc_lr"] == first["oc_lr"]) & (raw["layer_set"] == "3")
    ]  # fmt: skip


def _cell(table: tables.Table, row: str, *group: str) -> dict[str, float]:
    """One cell's stats {mean, std, n, ...} from a table's numeric data."""
    return {c[-1]: table.data.at[row, c] for c in table.data.columns if c[:-1] == group}


def _ok(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.loc[rows["status"] == "ok", metric]


# -- paper numbers --------------------------------------------------------------------------------------------------
def test_paper_numbers_ship_as_package_data():
    paper = load_paper()
    assert len(paper) == 429 and set(paper["table"]) == {"I", "II", "III", "IV", "V", "VI", "VII"}
    assert paper_table("I").query("method == 'MOCCA (soft)' and class_name == 'airplane'")["value"].item() == 0.626
    assert paper_table("VII")["layers"].iloc[-1] == "0,1,2,3,4,5,6"


def test_class_average_reproduces_the_papers_table_two_from_table_one():
    one, two = paper_table("I"), paper_table("II").set_index("method")
    for method, rows in one.groupby("method"):
        mean, se = class_average(rows["value"])
        assert mean == pytest.approx(two.at[method, "value"], abs=6e-4), method
        assert se == pytest.approx(two.at[method, "std"], abs=6e-4), method


# -- which runs are reported ----------------------------------------------------------------------------------------
def test_reported_configs_follow_the_selection_and_pair_the_last_layer_twin(digits_sweep, raw):
    reported = reported_runs(open_sweep(digits_sweep))
    for cls in CLASSES:
        for boundary in ("soft", "hard"):
            multi = reported[(reported["normal_class"] == cls) & (reported["label"] == f"MOCCA ({boundary})")]
            twin = reported[
                (reported["normal_class"] == cls) & (reported["label"] == f"MOCCA ({boundary}), last layer")
            ]
            assert set(multi["config_key"]) == {_selected(digits_sweep, cls, boundary)["config_key"]}
            assert set(multi["source"]) == {"selected"} and set(twin["source"]) == {"twin"}
            assert set(twin["layer_set"]) == {"3"}
            assert twin["ae_lr"].nunique() == 1 and twin["ae_lr"].iloc[0] == multi["ae_lr"].iloc[0]
            # every run of the selected config counts, including the seed its search run trained
            assert set(multi["run_key"]) == set(
                _expected_rows(raw, digits_sweep, cls, f"MOCCA ({boundary})")["run_key"]
            )


def test_without_selection_the_config_with_most_seeds_then_best_val_auc_is_reported(digits_sweep, tmp_path):
    source = ResultsStore(digits_sweep)
    runs = source.load()
    searching = ResultsStore(str(tmp_path / "searching"))  # a sweep still searching: search rows, no selections
    searching.write_json("sweep.json", {"name": "searching"})
    for row in runs[runs["mode"] == "search"].to_dict("records"):
        searching.write_run(row)
    reported = reported_runs(open_sweep(searching.uri))
    search = runs[runs["mode"] == "search"]
    for (cls, boundary), rows in search.groupby(["normal_class", "boundary"]):
        best = rows.loc[rows["val_auc"].idxmax(), "config_key"]  # one seed each: the best validation AUC wins
        got = reported[(reported["normal_class"] == cls) & (reported["label"] == f"MOCCA ({boundary})")]
        assert set(got["config_key"]) == {best} and set(got["source"]) == {"most seeds"}


# -- tables ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["auc", "max_ba"])
def test_per_class_table_means_stds_and_counts(digits_sweep, digits_tables, raw, metric):
    table = digits_tables[f"digits/{metric}-per-class"]
    labels = ["MOCCA (soft)", "MOCCA (soft), last layer", "MOCCA (hard)", "MOCCA (hard), last layer", "OC-SVM",
              "Isolation Forest"]  # fmt: skip
    assert list(table.data.index) == ["0", "1"]
    assert list(dict.fromkeys(c[1] for c in table.data.columns)) == labels
    assert {c[0] for c in table.data.columns} == {"ours"}  # the paper has no digits numbers ...
    assert "publishes no numbers" in table.caption and "selection protocol: val" in table.caption  # ... and says so
    for cls in CLASSES:
        for label in labels:
            rows = _expected_rows(raw, digits_sweep, cls, label)
            values = _ok(rows, f"test_{metric}")
            cell = _cell(table, str(cls), "ours", label)
            assert cell["n"] == len(values)
            assert cell["failed"] == (rows["status"] == "failed").sum()
            assert cell["diverged"] == (rows["status"] == "diverged").sum()
            if len(values) == 0:
                assert math.isnan(cell["mean"])
            else:
                assert cell["mean"] == pytest.approx(values.mean())
                assert cell["std"] == pytest.approx(values.std(ddof=1))
    # the fixture's failed and diverged runs are counted in their cells, not averaged
    assert table.data.loc["1", ("ours", "MOCCA (soft)", "failed")] == 1
    assert table.data.loc["1", ("ours", "MOCCA (hard), last layer", "diverged")] == 1
    shown = tables.display_frame(table)
    assert "1 failed" in shown.loc["1", "ours · MOCCA (soft)"]


def test_missing_cells_stay_missing(digits_tables):
    table = digits_tables["digits/auc-per-class"]
    cell = _cell(table, "1", "ours", "Isolation Forest")
    assert math.isnan(cell["mean"]) and math.isnan(cell["std"]) and cell["n"] == 0
    assert tables.display_frame(table).loc["1", "ours · Isolation Forest"] == tables.MISSING
    means = digits_tables["digits/means"].data
    assert means.loc["Isolation Forest", ("AUC", "ours", "classes")] == 1  # one class, not a filled-in two


def test_means_table_averages_the_per_class_means(digits_tables):
    per_class, means = digits_tables["digits/auc-per-class"].data, digits_tables["digits/means"].data
    for label in ("MOCCA (soft)", "MOCCA (hard), last layer", "OC-SVM"):
        class_means = per_class[("ours", label, "mean")].to_numpy()
        assert means.loc[label, ("AUC", "ours", "mean")] == pytest.approx(class_means.mean())
        assert means.loc[label, ("AUC", "ours", "std")] == pytest.approx(class_means.std(ddof=0) / math.sqrt(2))
        assert means.loc[label, ("AUC", "ours", "classes")] == 2


def test_ablation_table_groups_by_layer_set_and_boundary(digits_tables, raw):
    table = digits_tables["digits/VII/0"]
    # the ablation's hyperparameters, whatever phase first trained the run (a run key is trained once)
    rows = raw[(raw["method"] == "mocca") & (raw["normal_class"] == 0) & (raw["ae_lr"] == ABLATION["ae_lr"])
               & (raw["oc_lr"] == ABLATION["oc_lr"])]  # fmt: skip
    assert (rows["mode"] != "ablation").any(), "fixture: some ablation runs must have been stored by an earlier phase"
    assert list(table.data.index) == ["3", "2,3", "0,1,2,3"]
    for (boundary, layer_set), g in rows.groupby(["boundary", "layer_set"]):
        for metric, name in (("test_auc", "AUC"), ("test_max_ba", "maxBA")):
            cell = _cell(table, layer_set, name, boundary, "ours")
            assert cell["n"] == 2
            assert cell["mean"] == pytest.approx(_ok(g, metric).mean())
            assert cell["std"] == pytest.approx(_ok(g, metric).std(ddof=1))
    assert "only: no paper numbers" in table.caption


def test_cifar10_tables_put_the_papers_numbers_beside_ours(tmp_path):
    sweep = open_sweep(write_fake_cifar10(str(tmp_path / "cifar10")).uri)
    found = {t.key: t for t in tables.build_tables(sweep)}
    one = found["cifar10/I"].data
    assert len(one) == 10 and list(one.index[:2]) == ["airplane", "automobile"]  # every paper class is a row
    paper_methods = list(dict.fromkeys(paper_table("I")["method"]))
    assert [c[1] for c in one.columns if c[0] == "paper" and c[2] == "mean"] == paper_methods
    assert one.loc["airplane", ("paper", "MOCCA (soft)", "mean")] == 0.626
    assert one.loc["airplane", ("paper", "MOCCA (soft)", "std")] == 0.021
    runs = sweep.runs
    airplane = runs[(runs["config_key"] == "cfg-cifar10-0-soft")]["test_auc"]
    assert one.loc["airplane", ("ours", "MOCCA (soft)", "mean")] == pytest.approx(airplane.mean())
    assert one.loc["airplane", ("ours", "MOCCA (soft)", "n")] == 3
    assert math.isnan(one.loc["bird", ("ours", "MOCCA (soft)", "mean")])  # no runs: missing, never filled in
    assert "Table I" in found["cifar10/I"].caption and "selection protocol: test" in found["cifar10/I"].caption
    two = found["cifar10/II"].data
    assert two.loc["MOCCA (soft)", ("AUC", "paper", "mean")] == 0.676
    assert two.loc["MOCCA (soft)", ("AUC", "ours", "classes")] == 2
    assert math.isnan(two.loc["VAE", ("AUC", "ours", "mean")]) and math.isnan(
        two.loc["OC-SVM", ("AUC", "paper", "mean")]
    )
    markdown = tables.render(list(found.values()), "markdown")
    assert "paper · MOCCA (soft)" in markdown and "ours · MOCCA (soft)" in markdown and "0.626 ± 0.021" in markdown


def test_mvtec_and_shanghaitech_tables_and_the_papers_ablation(tmp_path):
    sweep = open_sweep(write_fake_mvtec_and_shanghaitech(str(tmp_path / "fake")).uri)
    found = {t.key: t for t in tables.build_tables(sweep)}
    assert {"mvtec/III", "mvtec/IV", "mvtec/V", "shanghaitech/VI", "mvtec/VII/2"} <= set(found)
    three = found["mvtec/III"].data
    assert len(three) == 15 and three.loc["leather", ("paper", "MOCCA (soft)", "mean")] == 0.96
    assert three.loc["leather", ("ours", "MOCCA (soft)", "mean")] == pytest.approx(0.805)  # maxBA = AUC - 0.1
    assert math.isnan(three.loc["carpet", ("ours", "MOCCA (soft)", "mean")])
    six = found["shanghaitech/VI"].data
    assert six.loc["MOCCA (soft)", ("AUC", "paper", "mean")] == 0.730
    assert six.loc["MOCCA (soft)", ("AUC", "ours", "mean")] == pytest.approx(0.705)
    seven = found["mvtec/VII/2"].data
    # the paper's seven layer sets first, then ours that the paper lacks; paper and ours side by side
    assert list(seven.index) == list(paper_table("VII")["layers"].drop_duplicates()) + ["0,2"]
    assert seven.loc["4,5,6", ("maxBA", "soft", "paper", "mean")] == 0.955
    assert seven.loc["4,5,6", ("maxBA", "soft", "ours", "mean")] == pytest.approx(0.725)
    assert seven.loc["4,5,6", ("maxBA", "soft", "ours", "n")] == 2
    assert math.isnan(seven.loc["5,6", ("maxBA", "soft", "ours", "mean")])  # paper only: ours stays missing
    assert "Table VII" in found["mvtec/VII/2"].caption


def test_mixed_protocols_are_flagged(tmp_path):
    store = write_fake_cifar10(str(tmp_path / "mixed"))
    store.write_run(fake_row(2, "bird", "soft", 0, 0.6, selection="val"))
    caption = {t.key: t for t in tables.build_tables(open_sweep(store.uri))}["cifar10/I"].caption
    assert "MIXED" in caption


# -- statistics -----------------------------------------------------------------------------------------------------
def test_wilcoxon_on_known_differences():
    statistic, p = stats.wilcoxon_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert p == pytest.approx(0.0625) and statistic == 0
    assert all(math.isnan(v) for v in stats.wilcoxon_test([], []))


def test_paired_comparisons_pair_by_class_and_seed(digits_sweep, raw):
    result = stats.compare(reported_runs(open_sweep(digits_sweep)), "digits").set_index(["claim", "metric"])
    for boundary in ("soft", "hard"):
        a, b = f"MOCCA ({boundary})", f"MOCCA ({boundary}), last layer"
        diffs = []
        for cls in CLASSES:
            left = _expected_rows(raw, digits_sweep, cls, a).query("status == 'ok'").set_index("seed")["test_auc"]
            right = _expected_rows(raw, digits_sweep, cls, b).query("status == 'ok'").set_index("seed")["test_auc"]
            common = left.index.intersection(right.index)
            diffs += list(left[common] - right[common])
        row = result.loc[(f"multi-layer vs last layer ({boundary})", "AUC")]
        assert row["n_pairs"] == len(diffs) == 4  # 2 classes x 2 seeds; the failed / diverged seed 2 pairs with nothing
        assert row["mean_diff"] == pytest.approx(np.mean(diffs))
        assert row["p_value"] == pytest.approx(wilcoxon(diffs).pvalue)
    assert result.loc[("soft vs hard", "maxBA"), "n_pairs"] == 4
    assert result.loc[("MOCCA (soft) vs Isolation Forest", "AUC"), "n_pairs"] == 2  # class 1 has no forest runs


# -- rendering and the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,marker", [("markdown", "| class |"), ("csv", "ours/MOCCA (soft)/mean"),
                                        ("latex", r"\begin{tabular}"), ("html", "<table")])  # fmt: skip
def test_every_format_renders_every_table(digits_tables, fmt, marker):
    text = tables.render(list(digits_tables.values()), fmt)
    assert marker in text and "Paired comparisons" in text and "Table VII" in text
    assert text.count("Reported configurations") == 1


def test_tables_command_writes_a_file(digits_sweep, tmp_path):
    out = tmp_path / "tables.tex"
    assert tables.main([digits_sweep, "--format", "latex", "--dataset", "digits", "--out", str(out)]) == 0
    assert r"$\pm$" in out.read_text()


def test_tables_command_errors_are_one_sentence_and_exit_2(digits_sweep, tmp_path, capsys):
    (tmp_path / "not-a-sweep").mkdir()
    for argv in ([str(tmp_path / "missing")], [str(tmp_path / "not-a-sweep")], [digits_sweep, "--dataset", "mvtec"]):
        assert tables.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(tmp_path / "not-a-sweep")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "is not a sweep folder" in proc.stderr


def test_an_empty_sweep_prints_that_nothing_finished(tmp_path):
    store = ResultsStore(str(tmp_path / "new"))
    store.write_json("sweep.json", {"name": "new"})
    text = tables.render(tables.build_tables(open_sweep(store.uri)))
    assert "no finished runs yet" in text
    path, figures = report.write_report(store.uri)
    assert figures == 0 and "No ablation runs" in Path(path).read_text()


# -- the report -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_report(digits_sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    path, figures = report.write_report(digits_sweep, str(out))
    assert figures == DIGITS_FIGURES
    return Path(path)


def test_report_is_self_contained(digits_report):
    text = digits_report.read_text()
    assert text.count('class="plotly-graph-div"') == DIGITS_FIGURES
    assert text.count("plotly.js v") == 1  # the library once, inline
    outside_library = text.replace(
        get_plotlyjs(), ""
    )  # plotly.js itself names CDNs (e.g. for maps) it never loads here
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://", outside_library)
    for heading in ("Layer ablation", "Per-layer score distributions", "Optuna search", "Training curves", "Cost",
                    "Paired comparisons", "Runs that did not finish ok"):  # fmt: skip
        assert heading in text


def test_report_builds_while_runs_are_being_written(digits_sweep, tmp_path):
    root = tmp_path / "live"
    shutil.copytree(digits_sweep, root)
    store = ResultsStore(str(root))
    template = store.load().query("mode == 'seeds' and status == 'ok' and method == 'mocca'").iloc[0].to_dict()
    scores = store.load_scores([template["run_key"]])
    curves = store.load_curves([template["run_key"]])
    before = len(store.done_keys())
    stop, written, errors = threading.Event(), [], []

    def writer():  # a sweep finishing more seeds of the same config while the report reads
        try:
            for seed in range(100, 160):
                if stop.wait(0.05):
                    break
                key = f"live{seed:012d}"
                row = {**template, "run_key": key, "seed": seed}
                store.write_run(row, scores.assign(run_key=key), curves.assign(run_key=key))
                written.append(key)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _, figures = report.write_report(str(root), str(tmp_path / "live.html"))
        assert figures == DIGITS_FIGURES
        tables.render(tables.build_tables(open_sweep(str(root))))
    finally:
        stop.set()
        thread.join()
    assert not errors and written, "the writer must have run alongside the reader"
    assert len(store.done_keys()) == before + len(written)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium): skipping the "
                    "headless rendering check")  # fmt: skip
def test_report_renders_in_headless_chromium(digits_report, tmp_path):
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", digits_report.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    dom = proc.stdout
    assert dom.count('class="plot-container plotly"') == DIGITS_FIGURES  # plotly drew every figure
    errors = re.search(r'<pre id="report-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == ""


def test_a_run_trained_with_others_counts_its_share_of_the_device_time():
    # a group of 4 runs sharing one stage 1 (data 2 s, stage 1 20 s): two configurations, each a pack of 2 seeds in
    # stage 2 (6 s and 8 s); then a run alone, and a row older than the columns
    runs = pd.DataFrame({
        "stage1_shared_by": [4, 4, 4, 4, 1, None], "pack_size": [2, 2, 2, 2, 1, None],
        "data_s": [2.0, 2.0, 2.0, 2.0, 1.0, 1.0], "autoencoder_s": [20.0, 20.0, 20.0, 20.0, 9.0, 6.0],
        "one_class_s": [6.0, 6.0, 8.0, 8.0, 3.0, 2.0], "score_s": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    })  # fmt: skip
    runs["total_s"] = runs[["data_s", "autoencoder_s", "one_class_s", "score_s"]].sum(axis=1)
    shares = report.device_shares(runs)
    # the group's device time: 2 + 20 + 6 + 8 + 4 x 1 scoring = 40 s, counted once
    assert shares["total_s"].iloc[:4].sum() == pytest.approx(40.0)
    assert shares["total_s"].iloc[4:].tolist() == runs["total_s"].iloc[4:].tolist()  # alone: unchanged
    assert shares["autoencoder_s"].tolist() == pytest.approx([5.0] * 4 + [9.0, 6.0])
    assert shares["one_class_s"].tolist() == pytest.approx([3.0, 3.0, 4.0, 4.0, 3.0, 2.0])
    assert shares["score_s"].tolist() == runs["score_s"].tolist()  # each run is scored on its own
