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
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_input_from_a_shell_exits_2():
    proc = subprocess.run([sys.executable, "-m", "engine.train", "--nu", "3"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == "error: nu must lie in (0, 1], got 3.0"


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    flags = ("--dataset", "--data-root", "--normal-class", "--layers", "--boundary", "--nu", "--code-size",
             "--ae-epochs", "--oc-lr", "--ae-milestones", "--batch-size", "--seed", "--device", "--json")  # fmt: skip
    for flag in flags:
        assert flag in out
