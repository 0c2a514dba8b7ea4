from dataclasses import fields

import pytest

from prunescope.errors import UsageError
from prunescope.pipeline.config import RULES, RunConfig, check_settings, load_config


def test_file_then_command_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "lenet5"\nepochs = 3\nlr = 1\nsparsities = [0.5, 0.9]\nsubset = 200\nfolds = 0\n')
    config = load_config(path, {"epochs": 5, "seed": None})
    assert config.model == "lenet5" and config.epochs == 5 and config.seed == 0
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.sparsities == (0.5, 0.9) and config.subset == 200
    assert load_config(None, {}) == RunConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3\n", "unknown key 'epoch'"),
        ('epochs = "3"\n', "key 'epochs' in .* must be int, got str"),
        ("sparsities = 0.9\n", "key 'sparsities' in .* must be a list of float"),
        ('methods = ["ours", 3]\n', "key 'methods' in .* must be str, got int"),
        ("folds = true\n", "key 'folds' in .* must be int, got bool"),
        ("epochs = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key_and_type(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as error:
        load_config(path, {})
    assert "\n" not in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.toml", {})


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("finetune_epochs = 0\npatience = 2\n", {}, "'patience' would be ignored: fine-tuning is off"),
        ('scratch = ["E"]\nscratch_max_factor = 2.0\n', {}, "'scratch_max_factor' would be ignored"),
    ],
)
def test_a_setting_the_mode_ignores_is_refused_in_one_line(tmp_path, text, overrides, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as error:
        load_config(path, overrides)
    assert "\n" not in str(error.value)


def test_settings_that_apply_are_accepted_and_the_rules_name_real_fields():
    config = load_config(None, {"folds": 0, "strategy": "grid", "subset": 300, "tolerance": 0.01})
    assert (config.strategy, config.subset, config.tolerance) == ("grid", 300, 0.01)
    known = {f.name for f in fields(RunConfig)}
    assert all(name in known for rule in RULES for name in rule.settings)
    # A RunConfig built in Python is checked on its non-default fields.
    with pytest.raises(UsageError, match="'patience' would be ignored"):
        check_settings(RunConfig(finetune_epochs=0, patience=2))
    # The pick's cross-validation (folds) reads the same scan: strategy, subset and tolerance always apply.
    assert check_settings(RunConfig(subset=100, folds=3)).subset == 100
