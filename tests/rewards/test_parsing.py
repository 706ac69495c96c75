"""Answer extraction and matching (rewards/parsing.py)."""

import pytest

from rewards.parsing import (
    answer_text,
    extract_answer,
    extract_answers,
    is_correct,
    match_option,
    normalize_answer,
    option_index,
    same_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>yes</answer>", "yes"),
        ("<answer> Right lung. </answer>", "Right lung."),
        ("<answer>no</answer> then <answer>yes</answer>", "yes"),  # the last answer wins
        ("<ANSWER>No</ANSWER>", "No"),
        ("<answer>\nleft\nlung\n</answer>", "left\nlung"),
        ("no tags at all", None),
        ("<answer>unterminated", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_answer_folds_case_punctuation_and_synonyms():
    assert normalize_answer("  YES. ") == "yes"
    assert normalize_answer("Absent") == "no"
    assert normalize_answer("Right   Lung!") == "right lung"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "Cardiomegaly"),
        ("(b)", "Cardiomegaly"),
        ("b. cardiomegaly", "Cardiomegaly"),
        ("cardiomegaly", "Cardiomegaly"),
        ("b. lung nodule", None),
        ("e", None),
        ("something else", None),
        (None, None),
    ],
)
def test_match_option_by_text_or_letter(answer, expected):
    assert match_option(answer, ["Lung nodule", "Cardiomegaly", "Emphysema", "Hiatal hernia"]) == expected


def test_is_correct():
    options = ["yes", "no"]
    assert is_correct("<think>a nodule</think><answer>Yes</answer>", "yes", options)
    assert not is_correct("<think>a nodule</think><answer>no</answer>", "yes", options)
    assert not is_correct("yes", "yes", options)  # no <answer> tag: not an answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes\u200b", "yes"),  # zero-width space (a copy-paste from a report)
        ("\ufeffYes", "yes"),  # byte-order mark
        ("emphy\u00adsema", "emphysema"),  # soft hyphen
        ("Ｙｅｓ", "yes"),  # fullwidth letters (NFKC)
        ("\ufb01brosis", "fibrosis"),  # "ﬁ" ligature
        ("ple\u0301vre", "plévre"),  # e + combining acute = é
        ("Straße", "strasse"),
        ("SAĞ AKCİĞER", "sağ akciğer"),  # Turkish dotted capital İ: "i", not "i" + combining dot
        ("AKCİĞERİN ÜST KISMI", "akciğerin üst kismi"),  # Turkish dotless capital I
        ("akciğerin üst kısmı", "akciğerin üst kismi"),  # Turkish dotless ı: the same answer as above
        ("medium (5\u201310 mm)", "medium (5-10 mm)"),
        ("\u200b . ", ""),
    ],
)
def test_normalize_answer_folds_unicode_equivalents(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_keeps_accents_that_make_another_letter():
    assert normalize_answer("şişlik") != normalize_answer("sislik")  # Turkish "swelling" vs a different word
    assert normalize_answer("Şişlik") == normalize_answer("ŞİŞLİK") == "şişlik"


LETTERED = ["A. Cardiomegaly", "B. Emphysema", "C. Lung nodule"]
PLAIN = ["Cardiomegaly", "Emphysema", "Lung nodule"]


@pytest.mark.parametrize("options", [LETTERED, PLAIN])
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1),
        ("(b)", 1),
        ("b)", 1),
        ("B. Emphysema", 1),
        ("(B) emphysema", 1),
        ("B: EMPHYSEMA\u200b", 1),
        ("Emphysema", 1),
        ("A. Emphysema", None),  # letter and text disagree
        ("D", None),
        ("B Emphysema", None),  # no separator: no letter
        ("Emphysema or cardiomegaly", None),
        ("", None),
        (None, None),
    ],
)
def test_option_index_resolves_either_letter_convention(options, answer, expected):
    assert option_index(answer, options) == expected


def test_option_index_letters_of_lettered_options_are_their_own():
    shuffled = ["C. Lung nodule", "A. Cardiomegaly", "B. Emphysema"]  # as displayed: the letter is the label
    assert [option_index(a, shuffled) for a in ("A", "B", "C", "lung nodule")] == [1, 2, 0, 0]
    # Not all lettered: letters are positions, and the "A." stays part of the first option's text.
    assert [option_index(a, ["A. fumigatus", "Candida"]) for a in ("B", "A", "fumigatus")] == [1, 0, None]


def test_option_index_text_before_letter_and_letter_before_lettered_text():
    assert option_index("B", ["B", "A"]) == 0  # an option whose text is a letter keeps its meaning
    assert option_index("B", ["A. b", "B. c"]) == 1  # among lettered options a bare letter is a letter


def test_answer_text_and_same_answer():
    assert answer_text("A", ["A. Yes", "B. No"]) == "yes" and answer_text("B. Absent", ["A. Yes", "B. No"]) == "no"
    assert answer_text(" Left lung ", []) == "left lung" and answer_text("\u200b", []) is None
    assert same_answer("B", "Emphysema", LETTERED) and not same_answer("A", "Emphysema", LETTERED)
    assert not same_answer("", "", []) and not same_answer(None, None, [])  # an empty answer is never right
    assert same_answer("SAĞ AKCİĞER", "sağ akciğer", [])


def test_extract_answers_in_order():
    assert extract_answers("<answer>yes</answer> x <ANSWER> no </ANSWER><answer>open") == ["yes", "no"]
    assert extract_answers("none") == []


def test_is_correct_never_for_an_empty_answer():
    assert not is_correct("<answer></answer>", "", [])
    assert not is_correct("<answer> \u200b </answer>", "\u200b", [])
    assert not is_correct("<answer></answer>", "", ["", "x"])
