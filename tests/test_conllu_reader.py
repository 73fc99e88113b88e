"""CoNLL-U reader, UD dataset building and vocabularies (mtlrnn.data.conllu_reader / vocab)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mtlrnn.data.conllu_reader import build_dataset
from mtlrnn.data.conllu_reader import load_ud
from mtlrnn.data.conllu_reader import read_conllu
from mtlrnn.data.conllu_reader import tasks_from
from mtlrnn.data.vocab import LabelVocabulary
from mtlrnn.data.vocab import Vocabulary
from mtlrnn.data.vocab import char_vocab
from mtlrnn.data.vocab import encode_chars
from mtlrnn.data.vocab import label_vocab

UD_DEV = "/work/shared/data/ud_english_ewt/en_ewt-ud-dev.conllu"


def row(*fields: str) -> str:
    assert len(fields) == 10
    return "\t".join(fields)


# Sentence 1: comments, a multiword token "don't" (3-4), an empty node (5.1), FEATS with
# several features given out of order (Person before Mood) and an unspecified XPOS.
SENT1 = [
    "# sent_id = s1",
    "# text = I really don't know",
    row(
        "1",
        "I",
        "I",
        "PRON",
        "PRP",
        "Case=Nom|Number=Sing|Person=1|PronType=Prs",
        "5",
        "nsubj",
        "_",
        "_",
    ),
    row("2", "really", "really", "ADV", "RB", "_", "5", "advmod", "_", "_"),
    row("3-4", "don't", "_", "_", "_", "_", "_", "_", "_", "_"),
    row(
        "3",
        "do",
        "do",
        "AUX",
        "VBP",
        "Person=1|Mood=Ind|Tense=Pres|VerbForm=Fin",
        "5",
        "aux",
        "_",
        "_",
    ),
    row("4", "n't", "not", "PART", "RB", "_", "5", "advmod", "_", "_"),
    row("5", "know", "know", "VERB", "_", "VerbForm=Inf", "0", "root", "_", "_"),
    row("5.1", "know", "know", "VERB", "_", "_", "_", "_", "2:conj", "_"),
]
# Sentence 2: a comment-only preamble is allowed; "I" again, a new word and a PUNCT.
SENT2 = [
    "# sent_id = s2",
    row(
        "1",
        "I",
        "I",
        "PRON",
        "PRP",
        "Case=Nom|Number=Sing|Person=1|PronType=Prs",
        "2",
        "nsubj",
        "_",
        "_",
    ),
    row("2", "Know", "know", "VERB", "VBP", "Mood=Ind|Tense=Pres", "0", "root", "_", "_"),
    row("3", ".", ".", "PUNCT", ".", "_", "2", "punct", "_", "_"),
]


def write(tmp_path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def sample(tmp_path) -> str:
    return write(tmp_path, "sample.conllu", ["# newdoc id = d1", *SENT1, "", *SENT2, ""])


# ----------------------------------------------------------------------------- reading


def test_read_keeps_regular_words_only(sample):
    sents = read_conllu(sample)
    assert len(sents) == 2
    s1, s2 = sents
    # "don't" (3-4) and the empty node 5.1 are gone; the syntactic words remain in order.
    assert s1.words == ["I", "really", "do", "n't", "know"]
    assert s1.columns["upos"] == ["PRON", "ADV", "AUX", "PART", "VERB"]
    assert s1.columns["xpos"] == ["PRP", "RB", "VBP", "RB", "_"]
    assert s1.columns["deprel"] == ["nsubj", "advmod", "aux", "advmod", "root"]
    assert s2.words == ["I", "Know", "."]
    assert s2.columns["upos"] == ["PRON", "VERB", "PUNCT"]
    assert all(len(v) == len(s.words) for s in sents for v in s.columns.values())
    # line numbers of each sentence's first token line (1-based, comments before it)
    assert s1.line == 4
    assert s2.line == 13
    # HEAD of each regular word (0 = the root); '_' is None.
    assert s1.heads == [5, 5, 5, 5, 0] and s2.heads == [2, 0, 2]
    lines = [row("1", "a", "a", "X", "_", "_", "_", "_", "_", "_")]
    nohead = write(Path(sample).parent, "nohead.conllu", lines)
    assert read_conllu(nohead)[0].heads == [None]


def test_feats_canonical_string(sample):
    s1 = read_conllu(sample)[0]
    assert s1.columns["feats"] == [
        "Case=Nom|Number=Sing|Person=1|PronType=Prs",
        "_",
        # written "Person=1|Mood=Ind|..." in the file: serialised sorted by feature name
        "Mood=Ind|Person=1|Tense=Pres|VerbForm=Fin",
        "_",
        "VerbForm=Inf",
    ]


def test_feats_split(sample):
    s1, s2 = read_conllu(sample, feats_split=True)
    names = sorted(k for k in s1.columns if k.startswith("feats:"))
    assert names == [
        "feats:Case",
        "feats:Mood",
        "feats:Number",
        "feats:Person",
        "feats:PronType",
        "feats:Tense",
        "feats:VerbForm",
    ]
    assert s1.columns["feats:Person"] == ["1", "_", "1", "_", "_"]
    assert s1.columns["feats:VerbForm"] == ["_", "_", "Fin", "_", "Inf"]
    assert s2.columns["feats:Mood"] == ["_", "Ind", "_"]
    assert sorted(k for k in s2.columns if k.startswith("feats:")) == names
    # the whole-string column is still there
    assert s1.columns["feats"][4] == "VerbForm=Inf"
    assert "feats:Case" not in read_conllu(sample)[0].columns


# ----------------------------------------------------------------------------- malformed


def test_wrong_column_count_names_file_and_line(tmp_path):
    bad = row("2", "really", "really", "ADV", "RB", "_", "5", "advmod", "_", "_")
    bad = bad.rsplit("\t", 1)[0]  # 9 fields
    lines = ["# sent_id = s1", SENT2[1], bad]
    path = write(tmp_path, "nine.conllu", lines)
    with pytest.raises(ValueError) as e:
        read_conllu(path)
    msg = str(e.value)
    assert "nine.conllu:3:" in msg
    assert "10 tab-separated fields" in msg and "got 9" in msg


def test_non_integer_id_names_file_and_line(tmp_path):
    lines = [*SENT2, "", "# sent_id = s3", row("x", "a", "a", "X", "_", "_", "0", "root", "_", "_")]
    path = write(tmp_path, "badid.conllu", lines)
    with pytest.raises(ValueError) as e:
        read_conllu(path)
    msg = str(e.value)
    assert "badid.conllu:7:" in msg
    assert "'x'" in msg and "integer" in msg


def test_plain_text_file_is_rejected(tmp_path):
    path = write(tmp_path, "notes.txt", ["Dear diary,", "today I parsed nothing."])
    with pytest.raises(ValueError) as e:
        read_conllu(path)
    msg = str(e.value)
    assert "notes.txt:1:" in msg
    assert "CoNLL-U" in msg


def test_empty_file_and_non_sequential_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.conllu.*no sentence"):
        read_conllu(write(tmp_path, "empty.conllu", ["# just a comment"]))
    lines = [SENT2[1], SENT2[3]]  # ids 1 then 3
    with pytest.raises(ValueError, match=r"skip\.conllu:2:.*expected word id 2"):
        read_conllu(write(tmp_path, "skip.conllu", lines))


def test_conllu_parse_error_is_wrapped(tmp_path):
    # layout fine, but HEAD is not an integer: conllu's own error, reported with our location
    lines = [*SENT2, "", row("1", "a", "a", "X", "_", "_", "zz", "root", "_", "_")]
    with pytest.raises(ValueError, match=r"head\.conllu:6:"):
        read_conllu(write(tmp_path, "head.conllu", lines))


# ----------------------------------------------------------------------------- vocabularies


def test_vocabulary_order_min_count_unk_and_round_trip():
    words = ["b", "a", "c", "a", "b", "d", "a"]
    v = Vocabulary.build(words)
    # specials first, then descending count, ties alphabetical
    assert v.tokens == ("<pad>", "<unk>", "a", "b", "c", "d")
    v2 = Vocabulary.build(words, min_count=2)
    assert v2.tokens == ("<pad>", "<unk>", "a", "b")
    ids = v2.encode(["a", "c", "zzz", "b"])
    assert ids.dtype == np.int32 and ids.tolist() == [2, 1, 1, 3]
    assert v2.decode(ids) == ["a", "<unk>", "<unk>", "b"]
    assert len(v2) == 4
    d = json.loads(json.dumps(v2.to_dict()))
    back = Vocabulary.from_dict(d)
    assert back == v2 and type(back) is Vocabulary
    assert back.encode(["b"]).tolist() == [3]
    with pytest.raises(ValueError, match="outside"):
        v2.decode([4])


def test_vocabulary_lowercase():
    v = Vocabulary.build(["The", "the", "THE", "Cat"], lowercase=True)
    assert v.tokens == ("<pad>", "<unk>", "the", "cat")
    assert v.encode(["tHe", "CAT", "dog"]).tolist() == [2, 3, 1]
    cased = Vocabulary.build(["The", "the", "THE", "Cat"])
    assert cased.encode(["tHe"]).tolist() == [1]
    assert Vocabulary.from_dict(v.to_dict()).encode(["CAT"]).tolist() == [3]


def test_label_vocabulary_unknown_handling():
    strict = label_vocab(["NOUN", "VERB", "ADJ", "NOUN"])
    assert isinstance(strict, LabelVocabulary)
    assert strict.tokens == ("ADJ", "NOUN", "VERB")
    assert strict.encode(["VERB", "ADJ"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="'INTJ'"):
        strict.encode(["NOUN", "INTJ"])
    loose = label_vocab(["NOUN", "VERB"], allow_unknown=True)
    assert loose.tokens == ("<unk>", "NOUN", "VERB")
    assert loose.encode(["INTJ", "VERB"]).tolist() == [0, 2]
    back = Vocabulary.from_dict(json.loads(json.dumps(strict.to_dict())))
    assert type(back) is LabelVocabulary and back == strict
    with pytest.raises(ValueError, match="'X'"):
        back.encode(["X"])


def test_char_vocab_and_encoding_shapes():
    words = Vocabulary.build(["abc", "ab", "a", "zz"])
    cv = char_vocab(words)  # from the vocabulary's words: a x3, b x2, z x2, c x1
    assert cv.tokens[:2] == ("<pad>", "<unk>")
    assert cv.tokens[2:] == ("a", "b", "z", "c")
    out = encode_chars(["abc", "", "abcq", "zzzzzz"], cv, max_len=4)
    assert out.shape == (4, 4) and out.dtype == np.int32
    a, b, c, z = (cv.index[ch] for ch in "abcz")
    assert out[0].tolist() == [a, b, c, 0]  # padded with 0
    assert out[1].tolist() == [0, 0, 0, 0]  # empty word
    assert out[2].tolist() == [a, b, c, 1]  # unknown char -> 1
    assert out[3].tolist() == [z, z, z, z]  # truncated
    assert char_vocab(["aab", "b"], min_count=3).tokens == ("<pad>", "<unk>")
    assert char_vocab(["aab", "b"], min_count=2).tokens == ("<pad>", "<unk>", "a", "b")


# ----------------------------------------------------------------------------- datasets


def test_build_dataset_and_tasks(sample):
    sents = read_conllu(sample)
    wv = Vocabulary.build(w for s in sents for w in s.words)
    lv = {t: label_vocab(x for s in sents for x in s.columns[t]) for t in ("upos", "deprel")}
    ds = build_dataset(sents, tasks=("upos", "deprel"), word_vocab=wv, label_vocabs=lv)
    specs = tasks_from(lv)
    assert [s.name for s in specs] == ["upos", "deprel"]
    assert specs[0].num_classes == len(lv["upos"]) == 6
    assert all(s.level == "token" and s.kind == "classification" for s in specs)
    ds.check(specs, vocab_size=len(wv))
    assert ds.lengths.tolist() == [5, 3]
    assert wv.decode(ds.inputs[1]) == ["I", "Know", "."]
    assert lv["upos"].decode(ds.labels["upos"][0]) == ["PRON", "ADV", "AUX", "PART", "VERB"]
    with pytest.raises(ValueError, match="xpos"):
        build_dataset(sents, tasks=("xpos",), word_vocab=wv, label_vocabs=lv)


def test_load_ud_vocab_from_train_only(tmp_path):
    write(tmp_path, "xx_t-ud-train.conllu", [*SENT1, "", *SENT2, ""])
    dev_lines = [
        row("1", "Zebra", "zebra", "PRON", "NN", "Number=Sing", "0", "root", "_", "_"),
        row("2", "know", "know", "INTJ", "UH", "_", "1", "discourse", "_", "_"),
    ]
    write(tmp_path, "xx_t-ud-dev.conllu", dev_lines)
    data = load_ud(tmp_path, tasks=("upos", "feats:Number"), lowercase=True, min_count=1)
    splits, specs, wv, lvs = data.splits, data.tasks, data.word_vocab, data.label_vocabs
    assert sorted(splits) == ["dev", "train"]
    assert [s.name for s in specs] == ["upos", "feats:Number"]
    assert "zebra" not in wv and "know" in wv
    dev = splits["dev"]
    assert dev.inputs[0].tolist() == [1, wv.index["know"]]  # unseen word -> unk
    # INTJ never occurs in train: reserved <unk> label id 0
    assert dev.labels["upos"][0].tolist() == [lvs["upos"].index["PRON"], 0]
    assert lvs["upos"].tokens[0] == "<unk>"
    assert lvs["feats:Number"].tokens == ("<unk>", "Sing", "_")
    assert dev.labels["feats:Number"][0].tolist() == [1, 2]
    for ds in splits.values():
        ds.check(specs, vocab_size=len(wv))


def test_load_ud_needs_train(tmp_path):
    write(tmp_path, "xx-ud-dev.conllu", SENT2)
    with pytest.raises(ValueError, match="train"):
        load_ud(tmp_path)


@pytest.mark.skipif(not os.path.exists(UD_DEV), reason="UD English-EWT not available")
def test_real_ud_english_ewt_dev():
    sents = read_conllu(UD_DEV)
    assert len(sents) > 1000
    upos = {t for s in sents for t in s.columns["upos"]}
    assert len(upos) == 17
    assert all(len(s.columns["feats"]) == len(s.words) for s in sents)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("copies", [1, 400])  # 400: the bad byte lies past the first 8 KiB
def test_non_utf8_byte_names_file_line_and_column(tmp_path, newline, copies):
    # A Latin-1 "é" (0xE9, not UTF-8) in the FORM of the last sentence's second word.
    good = [*SENT2, ""] * copies
    bad = row("2", "caf\udce9", "know", "VERB", "VBP", "_", "0", "root", "_", "_")
    lines = [*good, SENT2[1], bad, SENT2[3], ""]
    path = tmp_path / "latin1.conllu"
    data = newline.join(lines).encode("utf-8", errors="surrogateescape")
    path.write_bytes(data)
    n = len(good) + 2  # the bad line's number
    with pytest.raises(ValueError) as e:
        read_conllu(path)
    msg = str(e.value)
    assert f"latin1.conllu:{n}:" in msg and f"line {n}, column 6" in msg
    assert "expected UTF-8" in msg and "0xe9" in msg
