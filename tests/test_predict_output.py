"""``mtlrnn predict`` output: never onto the input, written atomically, valid CoNLL-U whose
DEPREL agrees with the input's HEAD, and input errors that name the line (issue 11)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mtlrnn.predict as predict_module
from mtlrnn.cli import main
from mtlrnn.config import ConfigError
from mtlrnn.config import load_config
from mtlrnn.data.conllu_reader import read_conllu
from mtlrnn.data.vocab import label_vocab
from mtlrnn.predict import predict
from mtlrnn.predict import write_conllu
from mtlrnn.training.run import fit

# A toy language whose tags are a function of the word: DET (ADJ) NOUN VERB DET NOUN PUNCT.
# The verb is the root (HEAD 0, DEPREL root); every other word hangs from it.
WORDS = {
    "DET": ["the", "a", "this"],
    "ADJ": ["big", "red", "old"],
    "NOUN": ["dog", "cat", "house", "tree"],
    "VERB": ["sees", "likes", "finds"],
    "PUNCT": ["."],
}
DEPREL = {"DET": "det", "ADJ": "amod", "NOUN": "nsubj", "VERB": "root", "PUNCT": "punct"}

TEXT_TINY = [
    "data.buckets=[8,16]",
    "model.embed_dim=16",
    "model.hidden_size=24",
    "model.dropout=0.0",
    "train.batch_size=16",
    "train.eval_batch_size=16",
    "train.log_every=20",
    "train.steps=40",
    "train.eval_splits=[dev]",
    "optimizer.learning_rate=0.01",
    "optimizer.warmup_steps=5",
    "logging.progress=false",
    "logging.plots=false",
    "tasks.include=[upos,deprel]",
]


def toy_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tags = ["DET"] + (["ADJ"] if rng.random() < 0.5 else []) + ["NOUN", "VERB"]
        tags += ["DET", "NOUN", "PUNCT"]
        out.append([(str(rng.choice(WORDS[t])), t) for t in tags])
    return out


def conllu_text(sentences, heads=None) -> str:
    """CoNLL-U for ``sentences``; ``heads[k]`` overrides sentence k's HEAD column (strings)."""
    lines = []
    for k, sent in enumerate(sentences):
        lines.append(f"# sent_id = {k}")
        verb = 1 + [t for _, t in sent].index("VERB")
        for i, (w, t) in enumerate(sent, start=1):
            head = heads[k][i - 1] if heads else ("0" if t == "VERB" else str(verb))
            lines.append(f"{i}\t{w}\t{w}\t{t}\t_\t_\t{head}\t{DEPREL[t]}\t_\t_")
        lines.append("")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained conllu run (UPOS + DEPREL) and a dev file to tag."""
    root = tmp_path_factory.mktemp("predict_run")
    tb = root / "tb"
    tb.mkdir()
    for split, n, seed in (("train", 96, 0), ("dev", 16, 1)):
        (tb / f"toy-ud-{split}.conllu").write_text(
            conllu_text(toy_sentences(n, seed)), encoding="utf-8"
        )
    cfg = load_config(None, ["data.source=conllu", f"data.conllu.dir={tb}", *TEXT_TINY])
    wd = root / "run"
    summary = fit(cfg, wd, verbose=False)
    assert summary["eval"]["dev"]["upos"]["accuracy"] > 0.9  # the toy tags are learnable
    return wd, tb / "toy-ud-dev.conllu"


def token_rows(path) -> list[list[list[str]]]:
    """The regular word rows of each sentence of a CoNLL-U file, split into fields."""
    sents, cur = [], []
    for line in open(path, encoding="utf-8").read().splitlines():
        if not line.strip():
            if cur:
                sents.append(cur)
            cur = []
        elif not line.startswith("#") and line.split("\t")[0].isdigit():
            cur.append(line.split("\t"))
    if cur:
        sents.append(cur)
    return sents


def is_root(deprel: str) -> bool:
    return deprel.split(":")[0] == "root"


# ----------------------------------------------------------------------------- --output


def _same_file_spellings(kind, src, tmp_path, monkeypatch):
    if kind == "symlink":
        out = tmp_path / "link.conllu"
        out.symlink_to(src)
        return str(out)
    if kind == "hardlink":
        out = tmp_path / "hard.conllu"
        os.link(src, out)
        return str(out)
    monkeypatch.chdir(tmp_path)
    if kind == "dot":
        return "./" + src.name
    (tmp_path / "a").mkdir()
    return os.path.join("a", "..", src.name)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "dot", "dotdot"])
def test_output_that_is_the_input_is_refused(run, tmp_path, monkeypatch, kind):
    wd, dev = run
    src = tmp_path / "in.conllu"
    src.write_bytes(dev.read_bytes())
    before = src.read_bytes()
    out = _same_file_spellings(kind, src, tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=r"^--output: .*is the input file") as e:
        predict(wd, src.name if kind in ("dot", "dotdot") else src, out, verbose=False)
    assert "\n" not in str(e.value)
    assert src.read_bytes() == before


def test_cli_refuses_a_symlink_to_the_input_and_keeps_it(run, tmp_path, capsys):
    wd, dev = run
    src = tmp_path / "in.conllu"
    src.write_bytes(dev.read_bytes())
    before = src.read_bytes()
    out = tmp_path / "out.conllu"
    out.symlink_to(src)
    rc = main(["predict", "--workdir", str(wd), "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("mtlrnn: error: --output:") and err.count("\n") == 1, err
    assert src.read_bytes() == before and out.is_symlink()


def test_output_directory_must_exist_checked_before_the_run_is_loaded(run, tmp_path, monkeypatch):
    wd, dev = run

    def no_model_work(*args, **kwargs):
        raise AssertionError("the run was loaded before --output was checked")

    monkeypatch.setattr(predict_module, "_load", no_model_work)
    missing = tmp_path / "no" / "such" / "dir" / "out.conllu"
    with pytest.raises(ConfigError, match=r"^--output: no such directory: .*dir") as e:
        predict(wd, dev, missing, verbose=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^--output: .* is a directory"):
        predict(wd, dev, tmp_path, verbose=False)
    assert not (tmp_path / "no").exists()


class _FailingSentences(list):
    """Predictions of one task whose sentence ``fail_at`` raises, as a crash mid-write."""

    def __init__(self, items, fail_at, exc):
        super().__init__(items)
        self.fail_at, self.exc = fail_at, exc

    def __getitem__(self, k):
        if k == self.fail_at:
            raise self.exc
        return super().__getitem__(k)


@pytest.mark.parametrize("exc", [RuntimeError("disk gone"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_no_partial_output(run, tmp_path, exc):
    _, dev = run
    sents = read_conllu(dev)
    out = tmp_path / "out.conllu"
    out.write_text("previous output\n", encoding="utf-8")
    upos = _FailingSentences([s.columns["upos"] for s in sents], 3, exc)
    with pytest.raises(type(exc)):
        write_conllu(dev, out, {"upos": upos})
    assert out.read_text(encoding="utf-8") == "previous output\n"
    assert sorted(os.listdir(tmp_path)) == ["out.conllu"]  # no temporary file left
    # The same for the column writer, with no previous output.
    words = [s.words for s in sents]
    with pytest.raises(type(exc)):
        predict_module.write_columns(tmp_path / "cols.txt", words, {"upos": upos})
    assert sorted(os.listdir(tmp_path)) == ["out.conllu"]


def test_predict_interrupted_while_writing_leaves_nothing(run, tmp_path, monkeypatch):
    wd, dev = run
    real = predict_module._tagged_conllu

    def interrupted(*args, **kwargs):
        for n, line in enumerate(real(*args, **kwargs)):
            if n == 5:
                raise KeyboardInterrupt
            yield line

    monkeypatch.setattr(predict_module, "_tagged_conllu", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(wd, dev, tmp_path / "out.conllu", verbose=False)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- DEPREL / HEAD


def test_consistent_deprel_hand_values():
    # Labels: 0 <unk> (never predicted), 1 nsubj, 2 obj, 3 root.
    inf = np.inf
    scores = np.array(
        [
            [-inf, 2.0, 1.0, 3.0],  # prefers root; best other: nsubj; margin 3 - 2 = 1
            [-inf, 0.5, 1.5, 1.0],  # prefers obj; margin 1 - 1.5 = -0.5
            [-inf, 1.0, 0.0, 4.0],  # prefers root; best other: nsubj; margin 4 - 1 = 3
        ]
    )
    is_root = np.array([False, False, False, True])
    # HEAD 0 -> root; any other head -> the best label that is not root.
    assert predict_module.consistent_deprel(scores, [2, 0, 2], is_root).tolist() == [1, 3, 1]
    # No tree ('_' everywhere): one root, the word with the widest margin (the third).
    no_tree = predict_module.consistent_deprel(scores, [None, None, None], is_root)
    assert no_tree.tolist() == [1, 2, 3]
    # A HEAD 0 elsewhere makes the '_' words non-root.
    assert predict_module.consistent_deprel(scores, [None, 0, None], is_root).tolist() == [1, 3, 1]
    # No HEAD 0 but some '_': the root is the best '_' word; attached words stay non-root.
    assert predict_module.consistent_deprel(scores, [None, 1, 1], is_root).tolist() == [3, 2, 1]


def test_deprel_decoder_knows_root_subtypes_and_needs_both_kinds():
    labels = label_vocab(["nsubj", "root", "root:emb"], allow_unknown=True)
    decode = predict_module._deprel_decoder(labels, [[2, 0]])
    scores = np.array([[-np.inf, 0.0, 1.0, 2.0], [-np.inf, 3.0, 1.0, 2.0]])
    assert labels.decode(decode(scores, 0)) == ["nsubj", "root:emb"]
    assert predict_module._deprel_decoder(label_vocab(["root"], allow_unknown=True), []) is None
    assert predict_module._deprel_decoder(label_vocab(["nsubj"], allow_unknown=True), []) is None


def _check_valid(out, heads):
    """``out`` reads back with the project's reader, and DEPREL is root iff HEAD is 0."""
    assert read_conllu(out)  # valid CoNLL-U
    rows = token_rows(out)
    for sent, hs in zip(rows, heads, strict=True):
        assert [r[6] for r in sent] == hs  # HEAD copied
        roots = [is_root(r[7]) for r in sent]
        if "0" in hs:
            assert roots == [h == "0" for h in hs], sent
        assert sum(roots) == 1, sent  # one root per sentence
    return rows


def test_deprel_follows_the_input_heads(run, tmp_path):
    wd, _ = run
    sents = toy_sentences(12, 7)
    # A different tree from the one trained on: the first noun is the root and the verb
    # depends on it, so the model's favourite label for the verb (root) is not allowed.
    heads = []
    for s in sents:
        tags = [t for _, t in s]
        noun = 1 + tags.index("NOUN")
        heads.append(["0" if i == noun else str(noun) for i in range(1, len(s) + 1)])
    src = tmp_path / "in.conllu"
    src.write_text(conllu_text(sents, heads), encoding="utf-8")
    out = tmp_path / "out.conllu"
    predict(wd, src, out, verbose=False)
    rows = _check_valid(out, heads)
    for sent, s in zip(rows, sents, strict=True):
        verb = [t for _, t in s].index("VERB")
        assert sent[verb][7] != "root"
    # With the training tree the model's own choice (the verb) is the root.
    train_tree = tmp_path / "tree.conllu"
    train_tree.write_text(conllu_text(sents), encoding="utf-8")
    predict(wd, train_tree, out, verbose=False)
    gold_heads = [[r[6] for r in s] for s in token_rows(train_tree)]
    rows = _check_valid(out, gold_heads)
    for sent, s in zip(rows, sents, strict=True):
        assert sent[[t for _, t in s].index("VERB")][7] == "root"


def test_deprel_without_heads_has_one_root_per_sentence(run, tmp_path):
    wd, _ = run
    sents = toy_sentences(12, 8)
    heads = [["_"] * len(s) for s in sents]
    src = tmp_path / "in.conllu"
    src.write_text(conllu_text(sents, heads), encoding="utf-8")
    out = tmp_path / "out.conllu"
    predict(wd, src, out, verbose=False)
    _check_valid(out, heads)


# ----------------------------------------------------------------------------- input errors


def test_non_utf8_input_names_the_line_and_writes_nothing(run, tmp_path):
    wd, dev = run
    lines = dev.read_bytes().split(b"\n")
    lines[9] = lines[9].replace(b"\t", b"\xe9\t", 1)  # a Latin-1 byte on line 10
    src = tmp_path / "latin1.conllu"
    src.write_bytes(b"\n".join(lines))
    out = tmp_path / "out.conllu"
    with pytest.raises(ValueError, match=r"latin1\.conllu:10: expected UTF-8 .* line 10, column"):
        predict(wd, src, out, verbose=False)
    assert not out.exists()


def test_non_utf8_column_input_names_the_line(run, tmp_path, monkeypatch):
    # A column run needs no training to reach the input reader: the config says columns.
    wd, _ = run
    cfg = load_config(
        None,
        [
            "data.source=columns",
            f"data.columns.files={{train: {tmp_path}/train.txt}}",
            "data.columns.tasks={upos: 1}",
        ],
    )
    monkeypatch.setattr(predict_module, "load_run", lambda workdir: cfg)
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"the DET\ndog NOUN\n\ncaf\xe9 NOUN\n")
    with pytest.raises(ValueError, match=r"latin1\.txt:4: expected UTF-8 .* line 4, column 4"):
        predict(wd, src, tmp_path / "out.txt", verbose=False)
    assert not (tmp_path / "out.txt").exists()


def test_predict_checkpoint_is_checked_before_the_run_is_loaded(tmp_path):
    from mtlrnn.predict import predict

    source = tmp_path / "in.conllu"
    source.write_text("1\tHi\t_\t_\t_\t_\t0\troot\t_\t_\n\n")
    with pytest.raises(ConfigError, match="--checkpoint: must be latest, best or a step"):
        predict(tmp_path / "no-run", source, tmp_path / "out.conllu", checkpoint="newest")
    assert not (tmp_path / "out.conllu").exists()
