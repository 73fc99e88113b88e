"""Tests for mtlrnn.config: defaults, YAML round trips, --set overrides, every error path."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import yaml

from mtlrnn import config as C
from mtlrnn.tasks import TaskSpec

REPO = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC_YAML = REPO / "configs" / "synthetic.yaml"


def _raises(fn, *args):
    with pytest.raises(C.ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _key_tree(value):
    """The nested key structure of plain config data (values dropped)."""
    if isinstance(value, dict):
        return {k: _key_tree(v) for k, v in value.items()}
    return None


def _assert_plain(value):
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str)
            _assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain(v)
    else:
        assert value is None or isinstance(value, (bool, int, float, str)), repr(value)


# ------------------------------------------------------------------------------ defaults


def test_defaults_round_trip_through_plain_dict():
    cfg = C.default_config()
    raw = C.to_dict(cfg)
    _assert_plain(raw)  # lists, not tuples; no dataclasses
    assert raw["data"]["buckets"] == [16, 24, 32, 40]
    assert C.from_dict(raw) == cfg
    assert C.from_dict({}) == cfg
    assert C.load_config() == cfg


def test_defaults_match_the_brief():
    cfg = C.default_config()
    assert (cfg.model.cell, cfg.model.hidden_size, cfg.model.dropout) == ("lstm", 128, 0.1)
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("adam", 3e-3)
    assert (cfg.train.steps, cfg.train.eval_splits) == (3000, ("dev", "test"))
    assert (cfg.weighting.name, cfg.weighting.params) == ("equal", {})
    assert isinstance(cfg.data.synthetic, C.SyntheticConfig)


def test_synthetic_yaml_is_the_default_config_with_every_key_written_out():
    assert C.load_config(SYNTHETIC_YAML) == C.default_config()
    raw = yaml.load(SYNTHETIC_YAML.read_text(), Loader=C._Loader)
    assert _key_tree(raw) == _key_tree(C.to_dict(C.default_config()))


def test_synthetic_yaml_comments_every_key():
    lines = SYNTHETIC_YAML.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_dump_yaml_round_trips_non_default_values(tmp_path):
    cfg = C.from_dict(
        {
            "model": {"cell": "gru"},
            "data": {"buckets": []},
            "optimizer": {"eps": 1e-12},
            # strings that YAML would read as bools or floats unless the dumper quotes them
            "tasks": {
                "include": ["tag0", "on", "1e3"],
                "options": {"tag0": {"weight": 2}, "no": {"pooling": "mean"}},
            },
            "weighting": {"name": "fixed", "params": {"weights": [1, 0.5]}},
        }
    )
    path = tmp_path / "config.yaml"
    C.dump_yaml(cfg, path)
    back = C.load_config(path)
    assert back == cfg
    assert back.tasks.include == ("tag0", "on", "1e3")
    assert back.tasks.options["no"].pooling == "mean"


# ------------------------------------------------------------------------------ overrides


def test_overrides_of_nested_keys_lists_and_dict_entries():
    cfg = C.load_config(
        overrides=[
            "model.hidden_size=256",
            "data.buckets=[16,32]",
            "data.synthetic.seed=7",
            "tasks.options.tag0.weight=2",
            "tasks.options.tag0.loss=cross_entropy",
            "train.eval_splits=[test]",
            "weighting.params={}",
        ]
    )
    assert cfg.model.hidden_size == 256
    assert cfg.data.buckets == (16, 32)
    assert cfg.data.synthetic.seed == 7
    assert cfg.tasks.options == {"tag0": C.TaskOptions(weight=2.0, loss="cross_entropy")}
    assert isinstance(cfg.tasks.options["tag0"].weight, float)
    assert cfg.train.eval_splits == ("test",)
    assert cfg.model.cell == "lstm"  # untouched keys keep their defaults


def test_numbers_in_exponent_form_and_integral_floats():
    cfg = C.load_config(overrides=["optimizer.learning_rate=1e-3", "train.steps=1e3"])
    assert cfg.optimizer.learning_rate == pytest.approx(1e-3)
    assert type(cfg.optimizer.learning_rate) is float
    assert cfg.train.steps == 1000 and type(cfg.train.steps) is int


def test_apply_overrides_returns_a_new_config_and_keeps_the_old():
    base = C.default_config()
    new = C.apply_overrides(base, ["model.num_layers=3", "checkpoint.enabled=false"])
    assert (new.model.num_layers, new.checkpoint.enabled) == (3, False)
    assert (base.model.num_layers, base.checkpoint.enabled) == (1, True)
    assert C.apply_overrides(base, []) == base


def test_file_and_overrides_are_validated_together(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  cell: gru\ndata:\n  buckets: [32, 64]\n")
    # The file alone would keep buckets increasing; an override replacing the list entirely
    # is checked against the final values, not an intermediate state.
    cfg = C.load_config(path, ["data.buckets=[8]", "optimizer.learning_rate=0.01"])
    assert (cfg.model.cell, cfg.data.buckets, cfg.optimizer.learning_rate) == ("gru", (8,), 0.01)


# ------------------------------------------------------------------------------ errors


ALLOWED_MODEL = "allowed: bidirectional, cell, char_embed_dim"

BAD_RAW = [
    # unknown keys, with a did-you-mean and the allowed set
    (
        {"model": {"hiden_size": 3}},
        "model.hiden_size: unknown key (did you mean 'hidden_size'?); " + ALLOWED_MODEL,
    ),
    ({"modle": {}}, "modle: unknown key (did you mean 'model'?); allowed: checkpoint, data"),
    ({"data": {"synthetic": {"bogus_key": 1}}}, "data.synthetic.bogus_key: unknown key"),
    (
        {"tasks": {"options": {"tag0": {"wieght": 1}}}},
        "tasks.options.tag0.wieght: unknown key (did you mean 'weight'?)",
    ),
    # wrong types
    ({"train": {"steps": "abc"}}, "train.steps: expected int, got str 'abc'"),
    ({"train": {"steps": True}}, "train.steps: expected int, got bool True"),
    ({"train": {"steps": 1.5}}, "train.steps: expected int, got float 1.5"),
    ({"train": {"steps": None}}, "train.steps: expected int, got null"),
    ({"optimizer": {"learning_rate": "fast"}}, "optimizer.learning_rate: expected float, got str"),
    ({"optimizer": {"learning_rate": float("nan")}}, "optimizer.learning_rate: must be a finite"),
    ({"model": {"bidirectional": 1}}, "model.bidirectional: expected bool, got int 1"),
    ({"weighting": {"name": 3}}, "weighting.name: expected str, got int 3"),
    ({"data": {"buckets": 16}}, "data.buckets: expected a list, got int 16"),
    ({"tasks": {"include": ["tag0", 3]}}, "tasks.include[1]: expected str, got int 3"),
    ({"tasks": {"options": {3: {}}}}, "tasks.options (key): expected str, got int 3"),
    ({"tasks": {"options": []}}, "tasks.options: expected a mapping, got list []"),
    # Literal choices
    ({"model": {"cell": "lsmt"}},
     "model.cell: must be one of lstm, gru, rnn, mingru, minlstm; got 'lsmt'"),
    ({"model": {"param_dtype": "float16"}}, "model.param_dtype: must be one of float32, bfloat16"),
    ({"train": {"eval_splits": ["val"]}}, "train.eval_splits[0]: must be one of train, dev, test;"),
    (
        {"tasks": {"options": {"t": {"loss": "msee"}}}},
        "tasks.options.t.loss: must be one of cross_entropy, mse, huber; got 'msee'",
    ),
    # ranges: inclusive, exclusive, per list element
    ({"model": {"dropout": 1.5}}, "model.dropout: must be in [0, 1), got 1.5"),
    ({"model": {"dropout": 1}}, "model.dropout: must be in [0, 1), got 1.0"),
    ({"model": {"hidden_size": 0}}, "model.hidden_size: must be >= 1, got 0"),
    ({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate: must be > 0, got 0.0"),
    ({"optimizer": {"end_lr_fraction": 1.01}}, "optimizer.end_lr_fraction: must be in [0, 1], "),
    ({"data": {"buckets": [16, 0]}}, "data.buckets[1]: must be >= 1, got 0"),
    ({"tasks": {"options": {"t": {"huber_delta": 0}}}}, "tasks.options.t.huber_delta: must be > 0"),
    ({"tasks": {"options": {"t": {"weight": -1}}}}, "tasks.options.t.weight: must be >= 0, got"),
    # sections that are not mappings
    ({"model": 3}, "model: expected a mapping, got int 3"),
    ({"data": {"synthetic": [1]}}, "data.synthetic: expected a mapping, got list [1]"),
    # cross-field rules from __post_init__, prefixed with the section path
    ({"data": {"buckets": [32, 16]}}, "data.buckets: must be strictly increasing, got [32, 16]"),
    ({"tasks": {"include": ["a", "a"]}}, "tasks.include: task names must be unique"),
    ({"data": {"synthetic": {"min_len": 20, "max_len": 10}}}, "data.synthetic."),
    # weighting strategy and hyper-parameters, checked against mtlrnn.weighting at load time
    ({"weighting": {"name": "equl"}}, "weighting.name: must be one of "),
    ({"weighting": {"params": {"bogus": 1}}}, "weighting.params.bogus: unknown hyper-parameter"),
]


@pytest.mark.parametrize("raw, expected", BAD_RAW, ids=[m.split(":")[0] for _, m in BAD_RAW])
def test_from_dict_errors_name_the_key(raw, expected):
    msg = _raises(C.from_dict, raw)
    assert msg.startswith(expected), msg


def test_top_level_must_be_a_mapping():
    assert _raises(C.from_dict, [1, 2]).startswith("config: expected a mapping, got list")


def test_weighting_name_error_lists_the_registered_names():
    from mtlrnn import weighting

    msg = _raises(C.from_dict, {"weighting": {"name": "equl"}})
    assert all(name in msg for name in weighting.names())
    assert "did you mean 'equal'?" in msg


def test_file_not_found_names_the_path(tmp_path):
    path = tmp_path / "missing.yaml"
    assert _raises(C.load_config, path) == f"{path}: config file not found"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n  cell: [lstm\n", ":3:1: invalid YAML"),  # unclosed flow sequence
        ("model:\n  cell: lstm\n   hidden_size: 3\n", ":3:15: invalid YAML"),
        ("model:\n  cell: lstm\n  cell: gru\n", ":3:3: invalid YAML: duplicate key 'cell'"),
        ("- model\n", ": expected a mapping of sections, got list"),
    ],
    ids=["unclosed", "bad-indent", "duplicate-key", "top-level-list"],
)
def test_bad_yaml_file_names_file_and_line(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = _raises(C.load_config, path)
    assert msg.startswith(str(path)) and expected in msg, msg


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert C.load_config(path) == C.default_config()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.hidden_size", "--set 'model.hidden_size': expected key=value"),
        ("=3", "--set '=3': expected key=value"),
        ("model..cell=gru", "--set 'model..cell=gru': expected key=value"),
        ("data.buckets=[16,", "--set 'data.buckets=[16,': value is not valid YAML"),
        ("model.cell.x=1", "model.cell"),  # a key inside a scalar
        ("model.hiden_size=3", "model.hiden_size: unknown key (did you mean 'hidden_size'?)"),
        ("model.hidden_size=big", "model.hidden_size: expected int, got str 'big'"),
        ("tasks.options.tag0.weight=-2", "tasks.options.tag0.weight: must be >= 0, got -2.0"),
    ],
)
def test_override_errors_name_the_override_or_key(override, expected):
    msg = _raises(C.load_config, None, [override])
    assert msg.startswith(expected), msg
    msg = _raises(C.apply_overrides, C.default_config(), [override])
    assert msg.startswith(expected), msg


def test_config_is_frozen():
    cfg = C.default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_size = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------ tasks


SPECS = (
    TaskSpec(name="tag0", level="token", kind="classification", num_classes=5),
    TaskSpec(name="tag1", level="token", kind="classification", num_classes=3),
    TaskSpec(name="seqcls", level="sequence", kind="classification", num_classes=4),
    TaskSpec(name="seqreg", level="sequence", kind="regression", dim=2),
)


def _tasks(**raw):
    return C.from_dict({"tasks": raw}).tasks


def test_resolve_tasks_defaults_keep_every_task():
    assert C.resolve_tasks(_tasks(), SPECS) == SPECS


def test_resolve_tasks_include_keeps_the_data_order():
    got = C.resolve_tasks(_tasks(include=["seqreg", "tag0"]), SPECS)
    assert [s.name for s in got] == ["tag0", "seqreg"]


def test_resolve_tasks_applies_options_and_keeps_the_rest():
    cfg = _tasks(
        options={
            "tag0": {"weight": 2, "label_smoothing": 0.1},
            "seqcls": {"pooling": "mean"},
            "seqreg": {"loss": "huber", "huber_delta": 0.5},
        }
    )
    got = {s.name: s for s in C.resolve_tasks(cfg, SPECS)}
    assert (got["tag0"].weight, got["tag0"].label_smoothing) == (2.0, 0.1)
    assert got["tag0"].loss == "cross_entropy"  # not overridden: the data's default stays
    assert got["tag1"] == SPECS[1]
    assert got["seqcls"].pooling == "mean"
    assert (got["seqreg"].loss, got["seqreg"].huber_delta) == ("huber", 0.5)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"include": ["tag00"]},
            "tasks.include: unknown task 'tag00' (did you mean 'tag0'?); "
            "available: tag0, tag1, seqcls, seqreg",
        ),
        (
            {"options": {"nope": {"weight": 1}}},
            "tasks.options.nope: unknown task 'nope'; available: tag0, tag1, seqcls, seqreg",
        ),
        (
            {"options": {"tag0": {"loss": "mse"}}},
            "tasks.options.tag0.loss: classification task 'tag0' allows cross_entropy; got 'mse'",
        ),
        (
            {"options": {"seqreg": {"loss": "cross_entropy"}}},
            "tasks.options.seqreg.loss: "
            "regression task 'seqreg' allows mse, huber; got 'cross_entropy'",
        ),
        (
            {"options": {"seqreg": {"label_smoothing": 0.1}}},
            "tasks.options.seqreg.label_smoothing: applies to classification tasks only",
        ),
        (
            {"options": {"seqreg": {"huber_delta": 2}}},
            "tasks.options.seqreg.huber_delta: applies to loss huber only; 'seqreg' uses 'mse'",
        ),
        (
            {"options": {"tag1": {"pooling": "max"}}},
            "tasks.options.tag1.pooling: applies to sequence-level tasks only",
        ),
    ],
    ids=["include", "options-name", "mse-on-cls", "ce-on-reg", "smoothing", "huber", "pooling"],
)
def test_resolve_tasks_errors_name_the_key(raw, expected):
    msg = _raises(C.resolve_tasks, _tasks(**raw), SPECS)
    assert msg.startswith(expected), msg
