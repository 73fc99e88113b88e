"""``mtlrnn predict``: tag new text with a trained run and write it back in its own format.

For a run trained on CoNLL-U (``data.source: conllu``) the input is a CoNLL-U file and the
output is the same file, line for line, with the predicted columns filled in: UPOS, XPOS,
FEATS and DEPREL for the tasks the run trained (``feats:<Name>`` tasks are joined into one
FEATS string). Comments, multiword-token lines, empty nodes and every other column are
copied unchanged, so the output is valid CoNLL-U whenever the input is.

DEPREL and HEAD. The model labels words, it does not parse: HEAD is the input's. UD requires
DEPREL to be ``root`` (or a ``root:`` subtype) exactly when HEAD is 0, so the predicted label is
the best-scoring label consistent with the input's HEAD:

- HEAD 0: the best-scoring root label;
- HEAD another word: the best-scoring label that is not root (where the model's first choice
  is ``root``, its runner-up);
- HEAD ``_`` (an input without a tree): if no word of the sentence has HEAD 0, the one ``_``
  word whose root label beats its best other label by the widest margin is the root, and
  every other ``_`` word gets its best non-root label, so each sentence has exactly one root.

Against gold HEADs this can only raise DEPREL accuracy (a label the rule changes was
inconsistent with the gold HEAD, hence wrong). The rule needs a root label and another one
in the run's DEPREL vocabulary (every UD treebank has both); without them labels are the argmax.

For a run trained on column files (``data.source: columns``) the input is a column file in
the training layout (only the word column is read) and the output has one line per word:
the word, then one predicted label per task, tab-separated; a blank line between sentences.

Words are encoded with the vocabularies saved in the run's ``vocab.json`` (unknown words ->
``<unk>``, characters kept as in training); predictions never use the reserved ``<unk>`` label.

Output safety. ``--output`` must not be the input file, however it is spelled (a symlink, a
hard link, ``./x`` or ``a/../x``: files are compared, not names), its directory must exist and
it must not be a directory; all three are checked before the run is loaded, and each failure
is a one-line ConfigError naming ``--output``. The output is written to a temporary file in its
directory and renamed onto ``--output`` only when complete (:func:`mtlrnn.fileio.atomic_writer`):
a failed or interrupted run leaves no partial output (an existing file stays as it was) and
no temporary file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from collections.abc import Iterator
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
from mtlrnn.data.sources import Data
from mtlrnn.data.text import encode_words
from mtlrnn.data.text import utf8_error
from mtlrnn.data.text import vocabs_from_dict
from mtlrnn.data.vocab import Vocabulary
from mtlrnn.fileio import atomic_writer
from mtlrnn.fileio import same_file
from mtlrnn.model.heads import group_tasks
from mtlrnn.reporting import LOGGER
from mtlrnn.tasks import TaskSpec
from mtlrnn.training.run import load_run
from mtlrnn.training.run import load_trained
from mtlrnn.training.run import parse_checkpoint
from mtlrnn.training.workdir import VOCAB_FILE

# CoNLL-U column index of each predictable task column.
CONLLU_COLUMN = {"upos": 3, "xpos": 4, "feats": 5, "deprel": 7}
ROOT = "root"

# (scores [L_i, C] float32, sentence index i) -> class ids [L_i]
Decoder = Callable[[np.ndarray, int], np.ndarray]


def predict_labels(
    model: Any,
    params: Any,
    dataset: SequenceDataset,
    *,
    batch_size: int,
    buckets: Sequence[int],
    decoders: Mapping[str, Decoder] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Predicted class ids per token task: ``{task: [N arrays [L_i]]}`` in dataset order.

    Each word gets its highest-scoring class, except for the tasks in ``decoders``, where
    ``decoders[task](scores, i)`` turns sentence ``i``'s scores ``[L_i, C]`` (the logits,
    ``C = num_classes``) into its class ids ``[L_i]``. Class id 0 (the reserved ``<unk>``
    label of text data) is never predicted: its score is ``-inf``.
    """
    decoders = decoders or {}
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
                decode = decoders.get(spec.name)
                pred = scores.argmax(-1) if decode is None else None
                for row, i in enumerate(idx):
                    n = int(dataset.lengths[i])
                    if decode is None:
                        out[spec.name][int(i)] = pred[row, :n]
                    else:
                        out[spec.name][int(i)] = np.asarray(decode(scores[row, :n], int(i)))
    return {k: [np.asarray(v) for v in vs] for k, vs in out.items()}


def consistent_deprel(
    scores: np.ndarray, heads: Sequence[int | None], is_root: np.ndarray
) -> np.ndarray:
    """DEPREL class ids ``[L]`` of one sentence, consistent with its HEADs (module docstring).

    Args:
      scores: ``[L, C]`` label scores of the sentence's words (``-inf`` for labels never
        predicted).
      heads: the HEAD of each word: 0 for the root, another word's id, or ``None`` for ``_``.
      is_root: bool ``[C]``, which labels are root labels; at least one label must be root
        and one not.

    Returns:
      int ``[L]``: the best root label where HEAD is 0, the best non-root label where HEAD is
      another word; where HEAD is ``None``, the best non-root label except for one word when
      no HEAD is 0: the one with the largest margin of its best root score over its best
      non-root score, which gets its best root label.
    """
    scores = np.asarray(scores)
    is_root = np.asarray(is_root, bool)
    if len(heads) != scores.shape[0]:
        raise ValueError(f"consistent_deprel: {len(heads)} heads for {scores.shape[0]} words")
    root_scores = np.where(is_root, scores, -np.inf)  # [L, C]
    other_scores = np.where(is_root, -np.inf, scores)
    head = np.asarray([-1 if h is None else h for h in heads], np.int64)  # -1: '_'
    root = head == 0
    unknown = head < 0
    if unknown.any() and not root.any():
        margin = np.where(unknown, root_scores.max(-1) - other_scores.max(-1), -np.inf)
        root[int(margin.argmax())] = True
    return np.where(root, root_scores.argmax(-1), other_scores.argmax(-1))


def _deprel_decoder(
    labels: Vocabulary, heads: Sequence[Sequence[int | None]]
) -> Decoder | None:
    """A decoder keeping DEPREL consistent with ``heads`` (one list per sentence), or ``None``
    when the label set lacks a root label or a non-root one (then the rule cannot apply)."""
    is_root = np.asarray(
        [i >= labels.num_specials and t.split(":")[0] == ROOT for i, t in enumerate(labels.tokens)]
    )
    others = np.arange(len(labels)) >= labels.num_specials
    if not is_root.any() or not (others & ~is_root).any():
        return None
    return lambda scores, i: consistent_deprel(scores, heads[i], is_root)


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


def _check_output(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Raise a one-line ConfigError naming ``--output`` unless ``output_path`` can take the
    tagged copy of ``input_path``: it is not the input (same file by any name, links
    included), not a directory, and its directory exists and is writable."""
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    if same_file(input_path, output_path):
        raise ConfigError(
            f"--output: {output_path} is the input file {input_path} (same file); "
            "write the tagged copy to another file"
        )
    if os.path.isdir(output_path):
        raise ConfigError(f"--output: {output_path} is a directory; expected a file name")
    directory = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(directory):
        raise ConfigError(f"--output: no such directory: {directory} (create it first)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"--output: cannot create files in {directory} (permission denied)")


def _feats_from_split(values: Mapping[str, str]) -> str:
    items = sorted(
        ((name, v) for name, v in values.items() if v not in ("_", "<unk>")),
        key=lambda kv: (kv[0].lower(), kv[0]),
    )
    return "|".join(f"{k}={v}" for k, v in items) or "_"


def _tagged_conllu(
    input_path: str, predictions: Mapping[str, Sequence[Sequence[str]]]
) -> Iterator[str]:
    """The lines of ``input_path`` with the predicted columns filled in (see write_conllu)."""
    split_feats = [t for t in predictions if t.startswith(FEATS_PREFIX)]
    use_split = "feats" not in predictions and bool(split_feats)
    sentence, word = -1, 0
    in_sentence = False
    try:
        with open(input_path, encoding="utf-8") as src:
            for raw in src:
                line = raw.rstrip("\r\n")
                if not line.strip():
                    in_sentence = False
                    yield line + "\n"
                    continue
                if line.startswith("#"):
                    yield line + "\n"
                    continue
                if not in_sentence:
                    in_sentence, sentence, word = True, sentence + 1, 0
                fields = line.split("\t")
                if not fields[0].isdigit():  # multiword range or empty node
                    yield line + "\n"
                    continue
                for task, column in CONLLU_COLUMN.items():
                    if task in predictions:
                        fields[column] = predictions[task][sentence][word]
                if use_split:
                    values = {
                        t[len(FEATS_PREFIX) :]: predictions[t][sentence][word]
                        for t in split_feats
                    }
                    fields[CONLLU_COLUMN["feats"]] = _feats_from_split(values)
                yield "\t".join(fields) + "\n"
                word += 1
    except UnicodeDecodeError:
        raise utf8_error(input_path, "CoNLL-U text") from None


def write_conllu(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    predictions: Mapping[str, Sequence[Sequence[str]]],
) -> None:
    """Copy ``input_path`` to ``output_path`` with predicted columns filled in.

    ``predictions[task][k][j]`` is the label of regular word ``j`` of sentence ``k``; tasks are
    ``upos``, ``xpos``, ``feats``, ``deprel`` or ``feats:<Name>`` (joined into FEATS when no
    ``feats`` task is given). Other lines and columns are copied unchanged. The output is
    written atomically (:func:`mtlrnn.fileio.atomic_writer`): on any error it is left as it was.
    """
    with atomic_writer(output_path) as dst:
        for line in _tagged_conllu(os.fspath(input_path), predictions):
            dst.write(line)


def write_columns(
    output_path: str | os.PathLike,
    sentences: Sequence[Sequence[str]],
    predictions: Mapping[str, Sequence[Sequence[str]]],
) -> None:
    """One line per word: the word, then ``predictions[task][k][j]`` per task (in mapping
    order), tab-separated; a blank line after each sentence. Written atomically."""
    with atomic_writer(output_path) as f:
        for k, words in enumerate(sentences):
            for j, w in enumerate(words):
                f.write("\t".join([w, *(labels[k][j] for labels in predictions.values())]) + "\n")
            f.write("\n")


def _read_sentences(
    input_path: str, cfg: Any, names: Sequence[str], labels: Mapping[str, Vocabulary]
) -> tuple[list[list[str]], dict[str, Decoder]]:
    """The words of each sentence of ``input_path`` in the run's input format, and the
    decoders of its tasks (DEPREL kept consistent with a CoNLL-U input's HEADs)."""
    decoders: dict[str, Decoder] = {}
    if cfg.data.source == "conllu":
        split_feats = any(n.startswith(FEATS_PREFIX) for n in names)
        parsed = read_conllu(input_path, feats_split=split_feats)
        sentences = [s.words for s in parsed]
        if "deprel" in names:
            decoder = _deprel_decoder(labels["deprel"], [s.heads for s in parsed])
            if decoder is not None:
                decoders["deprel"] = decoder
    else:
        sentences = _read_column_words(input_path, cfg.data.columns.word_column)
    return sentences, decoders


def _trained_model(
    workdir: str,
    which: str | int,
    dataset: SequenceDataset,
    tasks: tuple[TaskSpec, ...],
    vocabs: Any,
    vocab_size: int,
) -> tuple[Any, Any]:
    """``(model, params)`` of the run's checkpoint ``which``, built for ``dataset``."""
    chars = vocabs[1]
    data = Data(
        tasks=tasks,
        splits={"train": dataset},
        vocab_size=vocab_size,
        char_vocab_size=0 if chars is None else len(chars),
    )
    return load_trained(workdir, data, which)


def _predict_buckets(buckets: Sequence[int], dataset: SequenceDataset) -> tuple[int, ...]:
    """The run's ``buckets`` shorter than ``dataset``'s longest sentence, then that length
    rounded up to a multiple of 8 (so every sentence fits)."""
    longest = int(dataset.lengths.max())
    return tuple(b for b in buckets if b < longest) + (-(-longest // 8) * 8,)


def _write_predictions(
    source: str,
    input_path: str,
    output_path: str,
    sentences: Sequence[Sequence[str]],
    strings: Mapping[str, Sequence[Sequence[str]]],
) -> None:
    """Write the predicted labels ``strings`` in the format of the run's data ``source``."""
    if source == "conllu":
        write_conllu(input_path, output_path, strings)
    else:
        write_columns(output_path, sentences, strings)


def predict(
    workdir: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_size: int = 0,
    verbose: bool = True,
    checkpoint: str | int = "latest",
) -> dict[str, Any]:
    """Tag ``input_path`` with the run in ``workdir`` (its ``checkpoint``: ``latest``,
    ``best`` or a step) and write ``output_path``.

    Returns ``{"sentences": n, "words": n, "tasks": [...], "output": path}``. Raises
    ConfigError for a workdir that is not a finished text run or an unusable ``--output``
    (the input itself, a directory, a missing directory: checked before the run is loaded),
    ValueError (file:line) for malformed input.
    """
    workdir, input_path, output_path = map(os.fspath, (workdir, input_path, output_path))
    which = parse_checkpoint(checkpoint)
    if not os.path.isfile(input_path):
        raise ConfigError(f"--input: no such file: {input_path}")
    _check_output(input_path, output_path)
    cfg, vocabs, tasks, vocab_size = _load(workdir)
    labels = vocabs[2]
    names = [t.name for t in tasks]
    sentences, decoders = _read_sentences(input_path, cfg, names, labels)
    if not sentences:
        raise ValueError(f"{input_path}: no sentences to tag")
    dataset = _encode(sentences, vocabs)
    model, params = _trained_model(workdir, which, dataset, tasks, vocabs, vocab_size)
    ids = predict_labels(
        model,
        params,
        dataset,
        batch_size=batch_size or cfg.train.eval_batch_size,
        buckets=_predict_buckets(cfg.data.buckets, dataset),
        decoders=decoders,
    )
    strings = {t: [labels[t].decode(p) for p in ids[t]] for t in names}
    _write_predictions(cfg.data.source, input_path, output_path, sentences, strings)
    result = {
        "sentences": len(sentences),
        "words": int(dataset.lengths.sum()),
        "tasks": names,
        "output": output_path,
    }
    if verbose:
        LOGGER.info(
            f"tagged {result['sentences']} sentences ({result['words']} words) with "
            f"{', '.join(result['tasks'])} -> {output_path}"
        )
    return result
