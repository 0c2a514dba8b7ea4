"""The command line: the main job end to end, and one-line errors for every bad input."""

import json
import pickle
import re

import pytest

from prunescope.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MLP trained on digits through the CLI, shared by the tests below."""
    out = tmp_path_factory.mktemp("train")
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--out", str(out), "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return out / "model.pt"


def test_sweep_from_checkpoint(cli, trained, tmp_path):
    code, out, _ = cli("sweep", "--checkpoint", str(trained), "--sparsities", "0.5,0.7", "--criterion",
                        "lamp", "--allocation", "erk", "--out", str(tmp_path), "--device", "cpu")
    assert code == 0 and "erk allocation" in out
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["command"] == "sweep" and doc["sweep"]["criterion"] == "lamp"


def test_listings(cli):
    code, out, _ = cli("models")
    assert code == 0 and "lenet300" in out and "resnet56" in out
    code, out, _ = cli("datasets")
    assert code == 0 and "digits" in out and "1293 / 144 / 360" in out and "needs --data-dir" in out


def _corrupt_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a checkpoint")
    return path


def _pickled_object(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(print))
    return path


def _empty_dir(tmp_path):
    return tmp_path


BAD_INPUTS = [
    (lambda tmp, ckpt: ["train", "--data", "imagenet", "--out", str(tmp)], "unknown dataset"),
    (lambda tmp, ckpt: ["train", "--model", "alexnet", "--out", str(tmp)], "alexnet"),
    (lambda tmp, ckpt: ["train", "--data", "mnist", "--data-dir", str(tmp), "--out", str(tmp)], "mnist"),
    (lambda tmp, ckpt: ["train", "--model", "nowhere.module:factory", "--out", str(tmp)], "cannot import"),
    (lambda tmp, ckpt: ["train", "--data", "nowhere.module:factory", "--out", str(tmp)], "cannot import"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(ckpt), "--sparsities", "0.5,1.3", "--out", str(tmp)],
     "outside [0, 1)"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(ckpt), "--sparsities", "half", "--out", str(tmp)],
     "comma-separated"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(ckpt), "--criterion", "l3", "--out", str(tmp)],
     "unknown --criterion"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(ckpt), "--allocation", "erm", "--out", str(tmp)],
     "unknown --allocation"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(ckpt), "--include", "conv*", "--out", str(tmp)],
     "matches no prunable layer"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(tmp / "missing.pt"), "--out", str(tmp)], "missing.pt"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(_corrupt_checkpoint(tmp)), "--out", str(tmp)], "model.pt"),
    (lambda tmp, ckpt: ["sweep", "--checkpoint", str(_pickled_object(tmp)), "--out", str(tmp)], "evil.pt"),
    (lambda tmp, ckpt: ["train", "--epochs", "0", "--out", str(tmp)], "epochs"),
    (lambda tmp, ckpt: ["run", "--device", "tpu", "--out", str(tmp)], "device"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUTS)
def test_bad_input_gives_a_one_line_error_and_exit_code_2(cli, tmp_path, trained, argv, expected):
    code, _, err = cli(*argv(tmp_path, trained))
    assert code == 2
    message = err.strip()
    assert message.startswith("error:") and "\n" not in message and "Traceback" not in message
    assert expected in message


def test_failed_command_keeps_earlier_results(cli, trained, tmp_path):
    assert cli("sweep", "--checkpoint", str(trained), "--sparsities", "0.5", "--out", str(tmp_path),
                "--device", "cpu")[0] == 0
    before = (tmp_path / "result.json").read_bytes()
    code, _, _ = cli("sweep", "--checkpoint", str(trained), "--include", "nothing*", "--out", str(tmp_path))
    assert code == 2
    assert (tmp_path / "result.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "sweep.csv"]


def test_checkpoint_of_another_architecture(cli, trained, tmp_path):
    import torch

    payload = torch.load(trained, weights_only=True)
    payload["model_spec"]["kwargs"] = {"hidden": [7]}
    bad = tmp_path / "other.pt"
    torch.save(payload, bad)
    code, _, err = cli("sweep", "--checkpoint", str(bad), "--out", str(tmp_path))
    assert code == 2 and "fc1" in err and "\n" not in err.strip()


def test_progress_is_logged_as_lines_when_not_on_a_terminal(cli, tmp_path, trained):
    code, _, err = cli("sweep", "--checkpoint", trained, "--sparsities", "0.5,0.9",
                         "--out", tmp_path / "sweep", "--device", "cpu")
    assert code == 0, err
    lines = [line for line in err.splitlines() if " sweeping: " in line]
    assert lines and re.fullmatch(r"\d\d:\d\d:\d\d sweeping: 3/3", lines[-1])  # the last step always logged
    assert "\x1b[" not in err  # no terminal control codes in a log
