"""Tests for mtlrnn.data.columns: CoNLL-style column files."""

import pytest

from mtlrnn.data.columns import Sentence
from mtlrnn.data.columns import read_columns

CONLL03 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O


"""

COLS = {"pos": 1, "chunk": 2, "ner": 3}


def write(tmp_path, text, name="data.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_conll2003_sentences(tmp_path):
    sents = read_columns(write(tmp_path, CONLL03), columns=COLS)
    assert [s.words for s in sents] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert all(isinstance(s, Sentence) for s in sents)
    assert sents[0].labels["ner"] == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert sents[0].labels["pos"] == ["NNP", "VBZ", "JJ", "NN", "."]
    assert sents[1].labels["chunk"] == ["B-NP", "I-NP"]
    assert sents[2].labels == {
        "pos": ["NNP", "CD"],
        "chunk": ["B-NP", "I-NP"],
        "ner": ["B-LOC", "O"],
    }
    assert len(sents[0]) == 5
    assert all("-DOCSTART-" not in s.words for s in sents)


def test_subset_of_columns_and_word_column(tmp_path):
    text = "NNP EU B-ORG\nVBZ rejects O\n"
    sents = read_columns(write(tmp_path, text), columns={"ner": 2}, word_column=1)
    assert len(sents) == 1
    assert sents[0].words == ["EU", "rejects"]
    assert sents[0].labels == {"ner": ["B-ORG", "O"]}


def test_no_trailing_newline_multiple_blank_lines_and_crlf(tmp_path):
    text = "a X\r\nb Y\r\n\r\n\r\n  \r\nc Z"
    sents = read_columns(write(tmp_path, text), columns={"t": 1})
    assert [s.words for s in sents] == [["a", "b"], ["c"]]
    assert [s.labels["t"] for s in sents] == [["X", "Y"], ["Z"]]


def test_tabs_and_docstart_without_blank_line(tmp_path):
    # CoNLL-2000 has no -DOCSTART-; a -DOCSTART- directly before tokens still splits.
    text = "x\tA\n-DOCSTART-\tO\ny\tB\n"
    sents = read_columns(write(tmp_path, text), columns={"t": 1})
    assert [s.words for s in sents] == [["x"], ["y"]]


def test_empty_file(tmp_path):
    assert read_columns(write(tmp_path, "\n\n"), columns={"t": 1}) == []


def test_too_few_columns_names_file_line_and_count(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-NP\n"
    p = write(tmp_path, text, name="bad.txt")
    with pytest.raises(ValueError, match=r"bad\.txt:4: expected at least 4 columns, got 3"):
        read_columns(p, columns=COLS)


def test_inconsistent_column_count(tmp_path):
    # Enough columns for what is asked (2), but the width changes on line 4.
    text = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nGerman JJ B-NP\n"
    p = write(tmp_path, text, name="ragged.txt")
    with pytest.raises(
        ValueError, match=r"ragged\.txt:4: inconsistent column count: got 3, but line 1 has 4"
    ):
        read_columns(p, columns={"pos": 1})


def test_bad_column_index(tmp_path):
    p = write(tmp_path, "a b\n")
    with pytest.raises(ValueError, match="'t'"):
        read_columns(p, columns={"t": -1})
    with pytest.raises(ValueError, match="word_column"):
        read_columns(p, columns={"t": 1}, word_column=-2)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_non_utf8_byte_names_file_line_and_column(tmp_path, newline):
    # 600 good lines (past the first 8 KiB read), then a Latin-1 "é" (0xE9, not UTF-8).
    lines = [f"w{i} NN" for i in range(600)] + ["", "caf\udce9 NN"]
    p = tmp_path / "latin1.txt"
    p.write_bytes(newline.join(lines).encode("utf-8", errors="surrogateescape"))
    with pytest.raises(ValueError) as e:
        read_columns(p, columns={"pos": 1})
    msg = str(e.value)
    assert "latin1.txt:602:" in msg and "line 602, column 4" in msg
    assert "expected UTF-8" in msg and "0xe9" in msg
