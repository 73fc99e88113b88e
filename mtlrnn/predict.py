"""``mtlrnn predict``: tag new text with a trained run and write it back in its own format.

For a run trained on CoNLL-U (``data.source: conllu``) the input is a CoNLL-U file and the
output is the same file, line for line, with the predicted columns filled in: UPOS, XPOS,
FEATS and DEPREL for the tasks the run trained (``feats:<Name>`` tasks are joined into one
FEATS string). Comments, multiword-token lines, empty nodes and every other column are
copied unchanged, so the output is valid CoNLL-U whenever the input is.

For a run trained on column files (``data.source: columns``) the input is a column file in
the training layout (only the word column is read) and the output has one line per word:
the word, then one predicted label per task, tab-separated; a blank line between sentences.

Words are encoded with the vocabularies saved in the run's ``vocab.json`` (unknown words ->
``<unk>``, characters kept as in training); predictions never use the reserved ``<unk>`` label.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mtlrnn.config import ConfigError
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import eval_plan
from mtlrnn.data.batching import make_batch
from mtlrnn.data.conllu_reader import FEATS_PREFIX
from mtlrnn.data.conllu_reader import read_conllu
from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.text import encode_words
from mtlrnn.data.text import vocabs_from_dict
from mtlrnn.heads import group_tasks
from mtlrnn.run import VOCAB_FILE
from mtlrnn.run import load_run
from mtlrnn.run import model_for
from mtlrnn.run import restore_state
from mtlrnn.sources import Data
from mtlrnn.tasks import TaskSpec

# CoNLL-U column index of each predictable task column.
CONLLU_COLUMN = {"upos": 3, "xpos": 4, "feats": 5, "deprel": 7}


def predict_labels(
    model: Any,
    params: Any,
    dataset: SequenceDataset,
    *,
    batch_size: int,
    buckets: Sequence[int],
) -> dict[str, list[np.ndarray]]:
    """Predicted class ids per token task: ``{task: [N arrays [L_i]]}`` in dataset order.

    Class id 0 (the reserved ``<unk>`` label of text data) is never predicted.
    """
    tasks = model.tasks
    groups = [g for g in group_tasks(tasks) if g.level == "token" and g.kind == "classification"]
    apply = jax.jit(lambda p, x, n, c: model.apply({"params": p}, x, n, c))
    out: dict[str, list[np.ndarray | None]] = {
        s.name: [None] * len(dataset) for g in groups for s in g.specs
    }
    for length, idx in eval_plan(dataset, batch_size=batch_size, buckets=buckets):
        batch = make_batch(dataset, (), idx, length=length, batch_size=batch_size)
        outputs = apply(params, batch["inputs"], batch["lengths"], batch.get("chars"))
        for g in groups:
            logits = np.asarray(outputs[g.name])  # [Kg, B, L, O]
            for j, spec in enumerate(g.specs):
                scores = logits[j, :, :, : spec.num_classes].copy()
                scores[..., 0] = -np.inf  # the reserved <unk> label
                pred = scores.argmax(-1)
                for row, i in enumerate(idx):
                    out[spec.name][int(i)] = pred[row, : int(dataset.lengths[i])]
    return {k: [np.asarray(v) for v in vs] for k, vs in out.items()}


def _load(workdir: str) -> tuple[Any, Any, Any, tuple[TaskSpec, ...]]:
    cfg = load_run(workdir)
    if cfg.data.source not in ("conllu", "columns"):
        raise ConfigError(
            f"--workdir: predict supports runs trained on conllu or columns data; this run's "
            f"data.source is {cfg.data.source!r}"
        )
    path = os.path.join(workdir, VOCAB_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"--workdir: {workdir} has no {VOCAB_FILE} (saved by mtlrnn train)")
    with open(path, encoding="utf-8") as f:
        vocabs = vocabs_from_dict(json.load(f))
    words, chars, labels, _ = vocabs
    specs = tuple(
        TaskSpec(name=t, level="token", kind="classification", num_classes=len(v))
        for t, v in labels.items()
    )
    tasks = resolve_tasks(cfg.tasks, specs)
    return cfg, vocabs, tasks, len(words)


def _encode(
    sentences: Sequence[Sequence[str]], vocabs: Any
) -> SequenceDataset:
    words, chars, _, max_word_len = vocabs
    encoded = [encode_words(s, words, chars, max_word_len) for s in sentences]
    return SequenceDataset(
        inputs=[ids for ids, _ in encoded],
        labels={},
        chars=None if chars is None else [c for _, c in encoded],
    )


def _read_column_words(path: str, word_column: int) -> list[list[str]]:
    from mtlrnn.data.columns import read_columns

    return [s.words for s in read_columns(path, columns={}, word_column=word_column)]


def _feats_from_split(values: Mapping[str, str]) -> str:
    items = sorted(
        ((name, v) for name, v in values.items() if v not in ("_", "<unk>")),
        key=lambda kv: (kv[0].lower(), kv[0]),
    )
    return "|".join(f"{k}={v}" for k, v in items) or "_"


def write_conllu(
    input_path: str,
    output_path: str,
    predictions: Mapping[str, Sequence[Sequence[str]]],
) -> None:
    """Copy ``input_path`` to ``output_path`` with predicted columns filled in.

    ``predictions[task][k][j]`` is the label of regular word ``j`` of sentence ``k``; tasks are
    ``upos``, ``xpos``, ``feats``, ``deprel`` or ``feats:<Name>`` (joined into FEATS when no
    ``feats`` task is given). Other lines and columns are copied unchanged.
    """
    split_feats = [t for t in predictions if t.startswith(FEATS_PREFIX)]
    use_split = "feats" not in predictions and bool(split_feats)
    sentence, word = -1, 0
    in_sentence = False
    src = open(input_path, encoding="utf-8")  # noqa: SIM115 (closed below, with dst)
    with src, open(output_path, "w", encoding="utf-8") as dst:
        for raw in src:
            line = raw.rstrip("\r\n")
            if not line.strip():
                in_sentence = False
                dst.write(line + "\n")
                continue
            if line.startswith("#"):
                dst.write(line + "\n")
                continue
            if not in_sentence:
                in_sentence, sentence, word = True, sentence + 1, 0
            fields = line.split("\t")
            if not fields[0].isdigit():  # multiword range or empty node
                dst.write(line + "\n")
                continue
            for task, column in CONLLU_COLUMN.items():
                if task in predictions:
                    fields[column] = predictions[task][sentence][word]
            if use_split:
                values = {
                    t[len(FEATS_PREFIX) :]: predictions[t][sentence][word] for t in split_feats
                }
                fields[CONLLU_COLUMN["feats"]] = _feats_from_split(values)
            dst.write("\t".join(fields) + "\n")
            word += 1


def predict(
    workdir: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_size: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Tag ``input_path`` with the run in ``workdir`` and write ``output_path``.

    Returns ``{"sentences": n, "words": n, "tasks": [...]}``. Raises ConfigError for a
    workdir that is not a finished text run, ValueError (file:line) for malformed input.
    """
    workdir, input_path, output_path = map(os.fspath, (workdir, input_path, output_path))
    if not os.path.isfile(input_path):
        raise ConfigError(f"--input: no such file: {input_path}")
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise ConfigError("--output: must differ from --input (the input is read while writing)")
    cfg, vocabs, tasks, vocab_size = _load(workdir)
    _, chars, _, _ = vocabs
    if cfg.data.source == "conllu":
        split_feats = any(t.name.startswith(FEATS_PREFIX) for t in tasks)
        sentences = [s.words for s in read_conllu(input_path, feats_split=split_feats)]
    else:
        sentences = _read_column_words(input_path, cfg.data.columns.word_column)
    if not sentences:
        raise ValueError(f"{input_path}: no sentences to tag")
    dataset = _encode(sentences, vocabs)
    data = Data(
        tasks=tasks,
        splits={"train": dataset},
        vocab_size=vocab_size,
        char_vocab_size=0 if chars is None else len(chars),
    )
    model = model_for(cfg, tasks, data)
    state = restore_state(workdir, cfg, model, data)
    longest = int(dataset.lengths.max())
    buckets = tuple(b for b in cfg.data.buckets if b < longest) + (-(-longest // 8) * 8,)
    ids = predict_labels(
        model,
        state.params,
        dataset,
        batch_size=batch_size or cfg.train.eval_batch_size,
        buckets=buckets,
    )
    labels = vocabs[2]
    strings = {t: [labels[t].decode(p) for p in preds] for t, preds in ids.items()}
    if cfg.data.source == "conllu":
        write_conllu(input_path, output_path, strings)
    else:
        names = [t.name for t in tasks]
        with open(output_path, "w", encoding="utf-8") as f:
            for k, words in enumerate(sentences):
                for j, w in enumerate(words):
                    f.write("\t".join([w, *(strings[t][k][j] for t in names)]) + "\n")
                f.write("\n")
    result = {
        "sentences": len(sentences),
        "words": int(dataset.lengths.sum()),
        "tasks": [t.name for t in tasks],
        "output": output_path,
    }
    if verbose:
        print(
            f"tagged {result['sentences']} sentences ({result['words']} words) with "
            f"{', '.join(result['tasks'])} -> {output_path}",
            file=sys.stderr,
        )
    return result
