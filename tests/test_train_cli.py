"""`python -m engine.train`: a real run, machine-readable output, and bad input exits 2 with one line."""

import json
import subprocess
import sys

import pytest

from engine.train import main


def test_digits_run_prints_layers_and_baselines(capsys):
    assert main(["--normal-class", "3", "--ae-epochs", "2", "--oc-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "MOCCA (soft, layers 0,1,2,3)" in out and "test AUC" in out
    assert out.count("alone: test AUC") == 4
    assert "OC-SVM" in out and "IsolationForest" in out


def test_json_lines(capsys):
    main(["--normal-class", "1", "--ae-epochs", "1", "--oc-epochs", "1", "--layers", "1,3", "--boundary", "hard",
          "--json"])  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["mocca", "ocsvm", "iforest"]
    assert rows[0]["layers"] == [1, 3] and rows[0]["boundary"] == "hard" and 0 <= rows[0]["test_auc"] <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nu", "0"], "nu must lie in (0, 1]"),
        (["--normal-class", "eleven"], "unknown digits class 'eleven'"),
        (["--layers", "0,9"], "layers must be distinct indices"),
        (["--layers", "a,b"], "layers must be comma-separated integers"),
        (["--dataset", "cifar10", "--normal-class", "cat"], "cifar-10-batches-py"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar", "--normal-class", "cat"], "cifar-10-batches-py"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "engine.train", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_explains_every_flag():
    proc = subprocess.run([sys.executable, "-m", "engine.train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    flags = ("--dataset", "--data-root", "--normal-class", "--layers", "--boundary", "--nu", "--code-size",
             "--ae-epochs", "--oc-lr", "--ae-milestones", "--batch-size", "--seed", "--device", "--json")  # fmt: skip
    for flag in flags:
        assert flag in proc.stdout
