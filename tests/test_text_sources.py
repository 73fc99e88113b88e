"""Real-data sources end to end: CoNLL-U, column files and CSV through the config and trainer,
character encoders, and ``mtlrnn predict`` (CoNLL-U round trip)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.cli import main
from mtlrnn.config import ConfigError
from mtlrnn.config import load_config
from mtlrnn.data.conllu_reader import load_ud
from mtlrnn.data.conllu_reader import read_conllu
from mtlrnn.data.sources import load_data
from mtlrnn.data.text import encode_text
from mtlrnn.model.char_encoder import CharCNN
from mtlrnn.model.char_encoder import CharLSTM
from mtlrnn.model.spec import ModelConfig
from mtlrnn.predict import predict
from mtlrnn.training.run import fit

EWT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ud_english_ewt")

# A toy language: determiner/adjective/noun/verb patterns whose tags are fully determined by
# the word, plus a capitalised unseen-word test (names) that only characters can tag.
DET = ["the", "a", "this"]
ADJ = ["big", "red", "old", "new"]
NOUN = ["dog", "cat", "house", "tree", "car"]
VERB = ["sees", "likes", "finds"]
XPOS = {"DET": "DT", "ADJ": "JJ", "NOUN": "NN", "VERB": "VBZ", "PUNCT": "."}
FEATS = {"DET": "Definite=Def", "NOUN": "Number=Sing", "VERB": "Number=Sing|Person=3"}
DEPREL = {"DET": "det", "ADJ": "amod", "NOUN": "nsubj", "VERB": "root", "PUNCT": "punct"}


def _sentence(rng: np.random.Generator) -> list[tuple[str, str]]:
    words = [(str(rng.choice(DET)), "DET")]
    if rng.random() < 0.5:
        words.append((str(rng.choice(ADJ)), "ADJ"))
    words += [(str(rng.choice(NOUN)), "NOUN"), (str(rng.choice(VERB)), "VERB")]
    words += [(str(rng.choice(DET)), "DET"), (str(rng.choice(NOUN)), "NOUN"), (".", "PUNCT")]
    return words


def write_conllu(path: str, n: int, seed: int, *, extras: bool = False) -> None:
    """``n`` toy sentences; with ``extras`` the first sentence has comments, a multiword token
    and an empty node, which readers skip and predict must copy unchanged."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(n):
        lines += [f"# sent_id = s{seed}-{k}", f"# text = sentence {k}"]
        for i, (w, tag) in enumerate(_sentence(rng), start=1):
            if extras and k == 0 and i == 2:
                lines.append(f"{i}-{i + 1}\t{w}x\t_\t_\t_\t_\t_\t_\t_\t_")
            head = "0" if tag == "VERB" else "4"
            feats = FEATS.get(tag, "_")
            lines.append(
                f"{i}\t{w}\t{w}\t{tag}\t{XPOS[tag]}\t{feats}\t{head}\t{DEPREL[tag]}\t_\t_"
            )
            if extras and k == 0 and i == 3:
                lines.append(f"{i}.1\tempty\t_\t_\t_\t_\t_\t_\t{i}:dep\t_")
        lines.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def treebank(tmp_path):
    d = tmp_path / "tb"
    d.mkdir()
    write_conllu(str(d / "toy-ud-train.conllu"), 96, 0)
    write_conllu(str(d / "toy-ud-dev.conllu"), 24, 1, extras=True)
    write_conllu(str(d / "toy-ud-test.conllu"), 24, 2)
    return d


TEXT_TINY = [
    "data.buckets=[8,16]",
    "model.embed_dim=16",
    "model.hidden_size=24",
    "model.dropout=0.0",
    "train.batch_size=16",
    "train.eval_batch_size=16",
    "train.log_every=10",
    "optimizer.learning_rate=0.01",
    "optimizer.warmup_steps=5",
    "logging.progress=false",
    "logging.plots=false",
]


def _conllu_config(treebank, *extra):
    return load_config(
        None,
        ["data.source=conllu", f"data.conllu.dir={treebank}", *TEXT_TINY, *extra],
    )


# ----------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("cls, width", [(CharCNN, 12), (CharLSTM, 2 * 12)])
def test_char_encoder_shapes_and_padding(cls, width):
    chars = jnp.array([[[3, 4, 5, 0], [6, 0, 0, 0], [0, 0, 0, 0]]], jnp.int32)  # [B=1, L=3, C=4]
    enc = cls(vocab_size=8, spec=ModelConfig(char_embed_dim=5, char_features=12))
    params = enc.init(jax.random.key(0), chars)
    out = jax.jit(enc.apply)(params, chars)
    assert out.shape == (1, 3, width)
    assert np.all(np.asarray(out[0, 2]) == 0)  # a padded word (no characters) is zero
    assert np.any(np.asarray(out[0, 0]) != 0)
    # Padding characters after a word do not change its vector.
    wider = jnp.concatenate([chars, jnp.zeros((1, 3, 3), jnp.int32)], axis=-1)
    np.testing.assert_allclose(enc.apply(params, wider), out, atol=1e-6)


def test_text_encoding_chars_and_unknowns():
    train = [(["Dogs", "bark"], {"pos": ["NOUN", "VERB"]}, "t:1")]
    dev = [(["Cats", "bark"], {"pos": ["NOUN", "INTJ"]}, "d:1")]
    data = encode_text({"train": train, "dev": dev}, tasks=["pos"], max_word_len=3)
    ds = data.splits["dev"]
    assert ds.inputs[0].tolist() == [1, data.word_vocab.index["bark"]]  # Cats -> <unk>
    assert ds.labels["pos"][0].tolist() == [data.label_vocabs["pos"].index["NOUN"], 0]
    chars = data.char_vocab
    assert ds.chars[0].shape == (2, 3)
    # "Cats" truncated to "Cat": C and t were never seen in train -> <unk> char id 1.
    assert ds.chars[0][0].tolist() == [1, chars.index["a"], 1]
    with pytest.raises(ValueError, match="d:1: task 'pos' has 1 labels for 2 words"):
        encode_text(
            {"train": train, "dev": [(["a", "b"], {"pos": ["X"]}, "d:1")]}, tasks=["pos"]
        )


# ----------------------------------------------------------------------------- sources


def test_conllu_config_loads_with_chars(treebank):
    cfg = _conllu_config(treebank, "data.text.max_word_len=8", "model.char_encoder=cnn")
    data = load_data(cfg.data)
    assert [t.name for t in data.tasks] == ["upos", "xpos", "feats", "deprel"]
    assert data.char_vocab_size > 2 and data.splits["train"].chars is not None
    assert "train 96 sentences" in data.description


def test_config_errors_for_text_sources(treebank):
    with pytest.raises(ConfigError, match="data.conllu.dir: required"):
        load_config(None, ["data.source=conllu"])
    with pytest.raises(ConfigError, match="data.text.max_word_len: must be >= 1"):
        load_config(None, ["data.source=conllu", "data.conllu.dir=x", "model.char_encoder=cnn"])
    with pytest.raises(ConfigError, match="model.char_encoder: 'lstm' needs word inputs"):
        load_config(None, ["model.char_encoder=lstm"])
    with pytest.raises(ConfigError, match="data.conllu.columns"):
        load_config(None, ["data.source=conllu", "data.conllu.dir=x", "data.conllu.columns=[pos]"])
    cfg = load_config(None, ["data.source=conllu", f"data.conllu.dir={treebank}/missing"])
    with pytest.raises(ConfigError, match="data.conllu.dir: no such directory"):
        load_data(cfg.data)


def test_cli_names_file_and_line_of_malformed_conllu(treebank, tmp_path, capsys):
    with open(treebank / "toy-ud-train.conllu", "a", encoding="utf-8") as f:
        f.write("1\tbroken line with spaces only\n")
    lines = open(treebank / "toy-ud-train.conllu", encoding="utf-8").read().splitlines()
    rc = main(
        ["train", "--set", "data.source=conllu", "--set", f"data.conllu.dir={treebank}",
         "--workdir", str(tmp_path / "wd"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert f"toy-ud-train.conllu:{len(lines)}: expected a token line with 10" in err


@pytest.mark.parametrize("encoder", ["cnn", "lstm"])
def test_conllu_training_learns_and_predict_round_trips(encoder, treebank, tmp_path):
    cfg = _conllu_config(
        treebank, "data.text.max_word_len=8", f"model.char_encoder={encoder}",
        "model.word_dropout=0.1", "train.steps=60",
    )
    wd = tmp_path / "run"
    summary = fit(cfg, wd, verbose=False)
    dev = summary["eval"]["dev"]
    assert dev["upos"]["accuracy"] > 0.9, dev  # the toy tags are a function of the word
    vocab = json.loads((wd / "vocab.json").read_text())
    assert vocab["max_word_len"] == 8 and vocab["chars"] is not None

    src = treebank / "toy-ud-dev.conllu"
    out = tmp_path / "pred.conllu"
    result = predict(wd, src, out, verbose=False)
    assert result["sentences"] == 24
    gold_lines = src.read_text(encoding="utf-8").splitlines()
    pred_lines = out.read_text(encoding="utf-8").splitlines()
    assert len(gold_lines) == len(pred_lines)
    for g, p in zip(gold_lines, pred_lines, strict=True):
        gf, pf = g.split("\t"), p.split("\t")
        if len(gf) < 10 or not gf[0].isdigit():  # comments, blanks, multiword, empty nodes
            assert g == p
        else:  # only UPOS, XPOS, FEATS, DEPREL may change
            assert [gf[i] for i in (0, 1, 2, 6, 8, 9)] == [pf[i] for i in (0, 1, 2, 6, 8, 9)]
    gold = read_conllu(src)
    pred = read_conllu(out)  # valid CoNLL-U
    for task in ("upos", "xpos", "feats", "deprel"):
        ok = sum(a == b for gs, ps in zip(gold, pred, strict=True)
                 for a, b in zip(gs.columns[task], ps.columns[task], strict=True))
        n = sum(len(s) for s in gold)
        if task == "deprel":
            # DEPREL is made consistent with the gold HEAD (root iff HEAD is 0); a label this
            # changes disagreed with the gold tree, so it was wrong: accuracy can only rise.
            assert ok / n >= dev[task]["accuracy"] - 1e-9
            continue
        # Predictions written to the file score exactly what evaluation reported.
        assert ok / n == pytest.approx(dev[task]["accuracy"], abs=1e-9), task


def test_predict_cli_errors(treebank, tmp_path, capsys):
    assert main(["predict", "--workdir", str(tmp_path), "--input", "x", "--output", "y"]) == 2
    assert "--input: no such file" in capsys.readouterr().err


def test_single_task_baseline_run(treebank, tmp_path):
    cfg = _conllu_config(treebank, "tasks.include=[xpos]", "train.steps=4")
    summary = fit(cfg, tmp_path / "wd", verbose=False)
    assert summary["run"]["tasks"] == ["xpos"]
    assert set(summary["eval"]["test"]) == {"xpos"}


def test_column_files_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("dev", 16)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            for w, tag in _sentence(rng):
                ner = "B-ORG" if w in ("dog", "cat") else "O"
                lines.append(f"{w} {XPOS[tag]} {tag} {ner}")
            lines.append("")
        (tmp_path / f"{split}.txt").write_text("\n".join(lines))
    cfg = load_config(
        None,
        [
            "data.source=columns",
            f"data.columns.files={{train: {tmp_path}/train.txt, dev: {tmp_path}/dev.txt}}",
            "data.columns.tasks={pos: 1, ner: 3}",
            "data.text.max_word_len=6",
            "model.char_encoder=cnn",
            "train.eval_splits=[dev]",
            "train.steps=40",
            *TEXT_TINY,
        ],
    )
    summary = fit(cfg, tmp_path / "wd", verbose=False)
    assert summary["eval"]["dev"]["pos"]["accuracy"] > 0.8
    out = tmp_path / "pred.txt"
    predict(tmp_path / "wd", tmp_path / "dev.txt", out, verbose=False)
    first = out.read_text().splitlines()[0].split("\t")
    assert len(first) == 3  # word, pos, ner


def test_csv_time_series_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("dev", 120)):
        x = rng.normal(size=n).cumsum()
        rows = ["x,y,up"] + [
            f"{x[t]:.4f},{x[t - 1] if t else 0:.4f},{'up' if t and x[t] > x[t - 1] else 'down'}"
            for t in range(n)
        ]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(
        None,
        [
            "data.source=csv",
            f"data.csv.files={{train: {tmp_path}/train.csv, dev: {tmp_path}/dev.csv}}",
            "data.csv.inputs=[x]",
            "data.csv.targets={lag: {column: y}, dir: {column: up, kind: classification, "
            "level: sequence}}",
            "data.csv.window=16",
            "data.csv.stride=4",
            "data.buckets=[16]",
            "train.eval_splits=[dev]",
            "train.steps=5",
            "train.batch_size=8",
            "logging.progress=false",
            "logging.plots=false",
        ],
    )
    data = load_data(cfg.data)
    assert data.num_features == 1 and data.vocab_size == 0
    summary = fit(cfg, tmp_path / "wd", verbose=False)
    assert set(summary["eval"]["dev"]) == {"lag", "dir"}


@pytest.mark.skipif(not os.path.isdir(EWT), reason="UD English-EWT not available")
def test_ewt_config_loads_the_treebank():
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "ud_ewt.yaml"))
    cwd = os.getcwd()
    try:
        os.chdir(os.path.join(os.path.dirname(__file__), ".."))
        text = load_ud(cfg.data.conllu.dir, tasks=("upos",), max_word_len=4)
    finally:
        os.chdir(cwd)
    assert len(text.splits["train"]) == 12544  # EWT r2.16 train sentences
    assert text.tasks[0].num_classes == 18  # 17 UPOS tags + the reserved <unk>
