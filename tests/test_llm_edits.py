"""SEARCH/REPLACE answers: parsing, exact and whitespace-tolerant application, errors for the model."""
import pytest

from evo.llm.edits import Edit, EditError, apply_edit, apply_edits, check_python, has_edit_blocks, parse_answer

SCRIPT = '''import torch

LR = 3e-3
WIDTH = 128


class Block:
    def __init__(self, width):
        self.width = width
        self.act = "relu"

    def forward(self, x):
        y = x * 2
        return y + 1
'''


def block(search, replace):
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def test_parse_idea_rationale_and_blocks():
    text = ("Sure! Here is my proposal.\n\nIDEA: raise the   learning rate\nRATIONALE: short runs like\nlarger steps.\n\n"
            "```python\n" + block("LR = 3e-3", "LR = 6e-3") + "```\n" + block("WIDTH = 128", "WIDTH = 192"))
    answer = parse_answer(text)
    assert answer.idea == "raise the learning rate"
    assert answer.rationale == "short runs like larger steps."
    assert answer.edits == (Edit("LR = 3e-3", "LR = 6e-3"), Edit("WIDTH = 128", "WIDTH = 192"))
    assert has_edit_blocks(text) and not has_edit_blocks("IDEA: nothing")


def test_markdown_header_and_missing_idea():
    assert parse_answer("**Idea:** use GELU\n" + block("a", "b")).idea == "use GELU"
    assert parse_answer("Swap the activation.\n" + block("a", "b")).idea == "Swap the activation."
    long = parse_answer("IDEA: " + "x" * 500 + "\n" + block("a", "b")).idea
    assert len(long) <= 160


def test_deletion_block_has_empty_replace():
    assert parse_answer(block("LR = 3e-3", "").rstrip("\n").replace("=======\n\n", "=======\n")).edits[0].replace == ""


@pytest.mark.parametrize("text, needle", [
    ("IDEA: x\nRATIONALE: y\n", "no edit block"),
    ("<<<<<<< SEARCH\nLR = 1\n>>>>>>> REPLACE\n", "no '=======' line"),
    ("<<<<<<< SEARCH\nLR = 1\n=======\nLR = 2\n", "does not end with a '>>>>>>> REPLACE'"),
    ("=======\nLR = 2\n>>>>>>> REPLACE\n", "without a '<<<<<<< SEARCH'"),
])
def test_malformed_answers(text, needle):
    with pytest.raises(EditError, match=needle):
        parse_answer(text)


def test_exact_edit_keeps_everything_else():
    out = apply_edits(SCRIPT, [Edit("LR = 3e-3", "LR = 6e-3"), Edit("WIDTH = 128", "WIDTH = 192\nDEPTH = 4")])
    assert out == SCRIPT.replace("LR = 3e-3", "LR = 6e-3").replace("WIDTH = 128", "WIDTH = 192\nDEPTH = 4")


def test_edits_apply_in_sequence():
    out = apply_edits(SCRIPT, [Edit("LR = 3e-3", "LR = 1e-3"), Edit("LR = 1e-3", "LR = 2e-3")])
    assert "LR = 2e-3" in out


def test_exact_text_within_a_line():
    src = "DEPTH = 2  # evo: range(1, 8)\nWIDTH = 128\n"
    assert apply_edit(src, Edit("DEPTH = 2", "DEPTH = 3")) == "DEPTH = 3  # evo: range(1, 8)\nWIDTH = 128\n"
    with pytest.raises(EditError, match=r"occurs 2 times in the script \(lines 1, 2\)"):
        apply_edit("a = 12\nb = 12\n", Edit("12", "13"))
    # a whole-line match wins over the same text inside other lines
    assert apply_edit("x = 1\nxx = 1\n", Edit("x = 1", "x = 2")) == "x = 2\nxx = 1\n"


def test_trailing_whitespace_tolerated():
    out = apply_edit(SCRIPT, Edit("LR = 3e-3   \nWIDTH = 128\t", "LR = 1.0"))
    assert "LR = 1.0\n\n\nclass Block" in out


def test_indentation_difference_is_reindented():
    # the model quoted a method body without its class indentation
    search = "def forward(self, x):\n    y = x * 2\n    return y + 1"
    replace = "def forward(self, x):\n    y = x * 3\n    if y is None:\n        y = x\n    return y + 1"
    out = apply_edit(SCRIPT, Edit(search, replace))
    assert ("    def forward(self, x):\n        y = x * 3\n        if y is None:\n            y = x\n"
            "        return y + 1\n") in out
    check_python(out)
    # and the other way round: quoted with too much indentation
    out = apply_edit(SCRIPT, Edit("        LR = 3e-3", "        LR = 5e-3"))
    assert "\nLR = 5e-3\n" in out


def test_blank_lines_tolerated():
    search = "    self.act = \"relu\"\n\n\ndef forward(self, x):"  # two blank lines, one in the script
    out = apply_edit(SCRIPT, Edit(search, "    self.act = \"gelu\"\n\ndef forward(self, x):"))
    assert '        self.act = "gelu"\n\n    def forward(self, x):\n' in out
    check_python(out)


def test_ambiguous_match_is_an_error():
    with pytest.raises(EditError, match=r"match 2 places in the script \(lines 13, 14\)"):
        apply_edit("a = 1\n" * 12 + "x = 1\nx = 1\n", Edit("x = 1", "x = 2"))


def test_no_match_shows_closest_lines():
    with pytest.raises(EditError) as err:
        apply_edit(SCRIPT, Edit("LR = 3e-4", "LR = 1e-3"), index=2)
    text = str(err.value)
    assert text.startswith("edit block 2: the SEARCH lines do not match")
    assert "closest lines in the script are:\nLR = 3e-3" in text


def test_empty_search_is_an_error():
    with pytest.raises(EditError, match="SEARCH part is empty"):
        apply_edit(SCRIPT, Edit("  ", "import os"))


def test_check_python_names_the_line():
    with pytest.raises(EditError, match=r"does not parse: .* at line 2: 'def f\(:'"):
        check_python("x = 1\ndef f(:\n    pass\n")


def test_file_without_trailing_newline():
    assert apply_edit("a = 1\nb = 2", Edit("b = 2", "b = 3")) == "a = 1\nb = 3"
