"""GRPO rewards (rewards/*.py): adversarial completions for each reward, and the scoring glue."""

import math

import pytest
import torch

from rewards.accuracy import accuracy_reward
from rewards.format import format_reward
from rewards.penalties import LengthPenalty, RepetitionPenalty
from rewards.scoring import RewardError, reward_name, score_completions
from rewards.validity import validity_reward

YES_NO = ["yes", "no"]
ABNORMALITIES = ["Lung nodule", "Cardiomegaly", "Emphysema", "Hiatal hernia"]
LUNGS = ["left lung", "right lung"]
LEFT_LOBES = ["left upper lobe", "left lower lobe"]
SIZES = ["small (<5 mm)", "medium (5–10 mm)", "large (>10 mm)"]
LETTERED = ["A. Cardiomegaly", "B. Emphysema", "C. Lung nodule"]  # OmniMedVQA / PMC-VQA / Med-R1 convention


def ans(text: str) -> str:
    return f"<think>looked at the slice</think><answer>{text}</answer>"


@pytest.mark.parametrize(
    ("completion", "answer", "options", "expected"),
    [
        (ans("yes"), "yes", YES_NO, 1.0),
        (ans(" YES. "), "yes", YES_NO, 1.0),
        (ans("\nYes\n"), "yes", YES_NO, 1.0),
        (ans("present"), "yes", YES_NO, 1.0),  # synonym
        (ans("no"), "yes", YES_NO, 0.0),
        ("yes", "yes", YES_NO, 0.0),  # no <answer> tag
        ("<think>r</think><answer>yes", "yes", YES_NO, 0.0),  # unterminated
        (ans(""), "yes", YES_NO, 0.0),
        (ans("yes and no"), "yes", YES_NO, 0.0),
        (ans("yes/no"), "yes", YES_NO, 0.0),
        ("<answer><answer>yes</answer></answer>", "yes", YES_NO, 0.0),  # nested: the inner tag is in the answer
        ("<answer>no</answer><answer>yes</answer>", "yes", YES_NO, 1.0),  # the last answer counts
        (ans("yes") + " trailing text", "yes", YES_NO, 1.0),  # stray text is format's concern, not accuracy's
        ("<ANSWER>Yes</ANSWER>", "yes", YES_NO, 1.0),  # extraction ignores tag case
        (ans("B"), "Cardiomegaly", ABNORMALITIES, 1.0),
        (ans("(b)"), "Cardiomegaly", ABNORMALITIES, 1.0),
        (ans("B. cardiomegaly"), "Cardiomegaly", ABNORMALITIES, 1.0),
        (ans("cardiomegaly"), "Cardiomegaly", ABNORMALITIES, 1.0),
        (ans("A. cardiomegaly"), "Cardiomegaly", ABNORMALITIES, 0.0),  # wrong letter, right text
        (ans("B. emphysema"), "Cardiomegaly", ABNORMALITIES, 0.0),  # right letter, wrong text
        (ans("C"), "Cardiomegaly", ABNORMALITIES, 0.0),
        (ans("Cardiomegaly or emphysema"), "Cardiomegaly", ABNORMALITIES, 0.0),
        (ans("E"), "Cardiomegaly", ABNORMALITIES, 0.0),
        (ans("B. right lung"), "right lung", LUNGS, 1.0),
        (ans("A. right lung"), "right lung", LUNGS, 0.0),
        (ans("Right\nlung"), "right lung", LUNGS, 1.0),  # multi-line answer
        (ans("left lung"), "right lung", LUNGS, 0.0),
        (ans("Medium (5–10 mm)."), "medium (5–10 mm)", SIZES, 1.0),
        (ans("medium (5-10 mm)"), "medium (5–10 mm)", SIZES, 1.0),  # ASCII hyphen for the en dash
        (ans("large (5–10 mm)"), "medium (5–10 mm)", SIZES, 0.0),  # splice of two options
        (ans("medium"), "medium (5–10 mm)", SIZES, 0.0),  # the model is told to answer verbatim
        (ans("Left upper lobe"), "left upper lobe", [], 1.0),  # open question: normalised text
        (ans("left lower lobe"), "left upper lobe", [], 0.0),
        # Empty answers never score, whatever the gold (the reader refuses an empty gold; this is the second guard).
        (ans(""), "", [], 0.0),
        (ans("\u200b"), "  ", [], 0.0),
        # Unicode equivalents of the gold.
        (ans("yes\u200b"), "yes", YES_NO, 1.0),
        (ans("yes\u200b"), "yes", [], 1.0),
        (ans("SAĞ AKCİĞER"), "sağ akciğer", [], 1.0),
        (ans("Ｙｅｓ"), "yes", YES_NO, 1.0),
        # Letter convention: the gold is compared as the option it denotes (was 0 for a gold "B").
        (ans("B"), "B", LETTERED, 1.0),
        (ans("(b)"), "B", LETTERED, 1.0),
        (ans("B. Emphysema"), "B", LETTERED, 1.0),
        (ans("emphysema"), "B", LETTERED, 1.0),
        (ans("B"), "B. Emphysema", LETTERED, 1.0),
        (ans("B"), "Emphysema", LETTERED, 1.0),
        (ans("A"), "B", LETTERED, 0.0),
        (ans("A. Emphysema"), "B", LETTERED, 0.0),
        (ans("B"), "B", ABNORMALITIES, 1.0),  # a letter gold among plain options: option B, Cardiomegaly
        (ans("Cardiomegaly"), "B", ABNORMALITIES, 1.0),
        (ans("Emphysema"), "B", ABNORMALITIES, 0.0),
    ],
)
def test_accuracy_reward(completion, answer, options, expected):
    assert accuracy_reward([completion], answer=[answer], options=[options], unknown_field=[1]) == [expected]


@pytest.mark.parametrize(
    ("completion", "prompt_format", "expected"),
    [
        ("<think>r</think><answer>yes</answer>", "think", 1.0),
        ("  \n<think>r</think>\n\n<answer>yes</answer>\n", "think", 1.0),
        ("<think>\nmulti\nline\n</think>\n<answer>\nleft\nlung\n</answer>", "think", 1.0),
        ("<think>r</think><answer></answer>", "think", 1.0),  # empty answer: format pass, validity fail
        ("<answer>yes</answer>", "think", 0.0),  # missing think
        ("<think>r</think>", "think", 0.0),  # missing answer
        ("<think>r</think>yes", "think", 0.0),
        ("<think>r</think><answer>yes", "think", 0.0),  # unterminated
        ("<think></think><answer>yes</answer>", "think", 0.0),  # empty think: reasoning skipped
        ("<think> \n </think><answer>yes</answer>", "think", 0.0),
        ("<think>r</think><answer><answer>yes</answer></answer>", "think", 0.0),  # nested
        ("<think>r</think><answer>no</answer><answer>yes</answer>", "think", 0.0),  # repeated answer
        ("<think>a</think><think>b</think><answer>yes</answer>", "think", 0.0),  # repeated think
        ("<think><think>r</think></think><answer>yes</answer>", "think", 0.0),
        ("<answer>yes</answer><think>r</think>", "think", 0.0),  # swapped
        ("<think>r <answer>no</answer></think><answer>yes</answer>", "think", 0.0),  # tag inside think
        ("<think>r</think><answer>yes <ANSWER>no</ANSWER></answer>", "think", 0.0),  # tag inside, any case
        ("<think>r</think><answer>yes</answer> I hope that helps.", "think", 0.0),
        ("Sure. <think>r</think><answer>yes</answer>", "think", 0.0),
        ("<think>r</think> so <answer>yes</answer>", "think", 0.0),  # text between the blocks
        ("<THINK>r</THINK><ANSWER>yes</ANSWER>", "think", 0.0),  # tags are lowercase only
        ("<think>r</think><Answer>yes</Answer>", "think", 0.0),
        ("<answer>yes</answer>", "no_think", 1.0),
        (" <answer>\nyes\n</answer> \n", "no_think", 1.0),
        ("<answer></answer>", "no_think", 1.0),
        ("<think>r</think><answer>yes</answer>", "no_think", 0.0),  # thought although told not to
        ("<think></think><answer>yes</answer>", "no_think", 0.0),
        ("<answer>yes</answer> because", "no_think", 0.0),
        ("<answer>no</answer><answer>yes</answer>", "no_think", 0.0),
        ("yes", "no_think", 0.0),
    ],
)
def test_format_reward(completion, prompt_format, expected):
    assert format_reward([completion], prompt_format=[prompt_format], answer=["yes"]) == [expected]


def test_format_reward_defaults_to_think_and_rejects_unknown_formats():
    assert format_reward(["<think>r</think><answer>yes</answer>", "<answer>yes</answer>"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="'reasoning'"):
        format_reward(["<answer>yes</answer>"], prompt_format=["reasoning"])


@pytest.mark.parametrize(
    ("completion", "options", "question_type", "expected"),
    [
        (ans("yes"), YES_NO, "presence", 1.0),
        (ans(" No. "), YES_NO, "presence", 1.0),
        (ans("absent"), YES_NO, "presence", 1.0),
        (ans("B"), YES_NO, "presence", 1.0),  # letter of "no"
        (ans("yes") + " trailing", YES_NO, "presence", 1.0),  # only the answer is judged
        (ans("yes and no"), YES_NO, "presence", 0.0),
        (ans("yes/no"), YES_NO, "presence", 0.0),
        (ans("maybe"), YES_NO, "presence", 0.0),
        (ans(""), YES_NO, "presence", 0.0),
        (ans("  \n "), YES_NO, "presence", 0.0),
        ("yes", YES_NO, "presence", 0.0),  # missing <answer>
        ("<think>r</think>", YES_NO, "presence", 0.0),
        ("<answer><answer>yes</answer></answer>", YES_NO, "presence", 0.0),
        (ans("C"), ABNORMALITIES, "abnormality", 1.0),
        (ans("(c)"), ABNORMALITIES, "abnormality", 1.0),
        (ans("C. Emphysema"), ABNORMALITIES, "abnormality", 1.0),
        (ans("hiatal hernia"), ABNORMALITIES, "abnormality", 1.0),
        (ans("A. emphysema"), ABNORMALITIES, "abnormality", 0.0),  # letter and text disagree
        (ans("Emphysema, cardiomegaly"), ABNORMALITIES, "abnormality", 0.0),
        (ans("E"), ABNORMALITIES, "abnormality", 0.0),  # no fifth option
        (ans("Pneumothorax"), ABNORMALITIES, "abnormality", 0.0),
        (ans("left upper lobe"), LEFT_LOBES, "location", 1.0),
        (ans("left upper lobe or left lower lobe"), LEFT_LOBES, "location", 0.0),
        (ans("large (>10 mm)"), SIZES, "size", 1.0),
        (ans("medium (5-10 mm)"), SIZES, "size", 1.0),
        (ans("large (5–10 mm)"), SIZES, "size", 0.0),  # splice of two options
        (ans("left upper lobe"), [], "location", 1.0),
        (ans("There is no nodule"), [], "abnormality", 1.0),
        (ans("yes and no"), [], "abnormality", 0.0),
        (ans("Yes. No."), [], "abnormality", 0.0),
        (ans(""), [], "location", 0.0),
        (ans("positive"), [], "presence", 1.0),
        (ans("probably"), [], "presence", 0.0),
        (ans("yes <think>x</think>"), [], "location", 0.0),  # tag inside the answer
        (ans("B"), LETTERED, "abnormality", 1.0),
        (ans("Emphysema"), LETTERED, "abnormality", 1.0),
        (ans("D"), LETTERED, "abnormality", 0.0),
        (ans("\u200b"), [], "location", 0.0),  # invisible only: empty
        # Several answer blocks: valid only when they agree (was 1.0 for "yes" then "no": the last was judged).
        ("<answer>yes</answer><answer>no</answer>", YES_NO, "presence", 0.0),
        ("<answer>yes</answer><answer>no</answer>", [], "presence", 0.0),
        ("<answer>left lung</answer><answer>right lung</answer>", [], "location", 0.0),
        ("<answer>maybe</answer><answer>yes</answer>", YES_NO, "presence", 0.0),  # an inadmissible block
        ("<answer></answer><answer>yes</answer>", YES_NO, "presence", 0.0),
        ("<answer>B</answer><answer>B. Emphysema</answer>", LETTERED, "abnormality", 1.0),  # the same option
        ("<answer>Yes</answer><answer>present</answer>", YES_NO, "presence", 1.0),
        ("<answer>Left lung</answer><answer>left lung.</answer>", [], "location", 1.0),
    ],
)
def test_validity_reward(completion, options, question_type, expected):
    assert validity_reward([completion], options=[options], question_type=[question_type], id=["q"]) == [expected]


def test_validity_reward_without_question_type():
    assert validity_reward([ans("probably"), ans("maybe")], options=[[], YES_NO]) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (99, -0.95), (100, -1.0), (130, -1.0)],
)
def test_length_penalty_ramps_across_the_buffer(length, expected):
    fixed = LengthPenalty(max_length=100, buffer=20)([""], completion_length=[length], max_completion_length=[999])
    from_field = LengthPenalty(buffer=20)([""], completion_length=[length], max_completion_length=[100])
    assert fixed == from_field == [pytest.approx(expected)]


def test_length_penalty_scale_zero_buffer_and_bad_config():
    assert LengthPenalty(max_length=100, buffer=20, penalty=-2.0)([""], completion_length=[90]) == [-1.0]
    hard = LengthPenalty(max_length=100, buffer=0)
    assert hard(["", ""], completion_length=[100, 101]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="max_completion_length"):
        LengthPenalty()([""], completion_length=[10])
    with pytest.raises(ValueError, match="buffer"):
        LengthPenalty(buffer=-1)
    with pytest.raises(ValueError, match="max_length"):
        LengthPenalty(max_length=0)


@pytest.mark.parametrize(
    ("completion", "ngram_size", "penalty", "expected"),
    [
        ("a b c a b c a b c", 3, -1.0, -(1 - 3 / 7)),  # 7 trigrams, 3 unique
        ("The cat the CAT", 2, -1.0, -(1 - 2 / 3)),  # lowercased
        ("the cat the cat", 2, -0.5, -0.5 * (1 - 2 / 3)),
        ("every word here is new", 3, -1.0, 0.0),
        ("too short", 3, -1.0, 0.0),
        ("", 3, -1.0, 0.0),
        ("yes yes yes yes", 1, -1.0, -0.75),
    ],
)
def test_repetition_penalty(completion, ngram_size, penalty, expected):
    reward = RepetitionPenalty(ngram_size=ngram_size, penalty=penalty)
    assert reward([completion], answer=["yes"]) == [pytest.approx(expected)]


def test_repetition_penalty_rejects_empty_ngrams():
    with pytest.raises(ValueError, match="ngram_size"):
        RepetitionPenalty(ngram_size=0)


class Unnamed:
    def __call__(self, completions, **_):
        return [0.0] * len(completions)


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (accuracy_reward, "accuracy_reward"),
        (LengthPenalty(), "length_penalty"),
        (RepetitionPenalty(), "repetition_penalty"),
        (Unnamed(), "Unnamed"),
        (lambda completions, **_: [], "<lambda>"),
    ],
)
def test_reward_name(func, expected):
    assert reward_name(func) == expected


def returns(output):
    def reward(completions, **_):
        return output

    return reward


def const(*values):
    return returns(list(values))


def nan_at_one(completions, **_):
    return [1.0, math.nan]


def raises_on_b(completions, **_):
    if "b" in completions:
        raise KeyError("boom")
    return [1.0] * len(completions)


FIELDS = {"id": ["q-a", "q-b"], "answer": ["yes", "no"]}


def test_score_completions_stacks_columns_in_order_with_nan_for_none():
    scores, errors = score_completions([const(1.0, None), const(0.5, 2)], ["a", "b"], FIELDS)
    assert scores.dtype == torch.float32 and scores.shape == (2, 2)
    assert torch.equal(scores.isnan(), torch.tensor([[False, False], [True, False]]))
    assert scores[0].tolist() == [1.0, 0.5] and scores[1, 1] == 2.0
    assert errors == {"reward": 0}  # both closures share a name, hence one count


def test_score_completions_passes_fields_to_builtin_rewards():
    completions = ["<think>r</think><answer>B</answer>", "<answer>yes and no</answer>"]
    fields = {
        "answer": ["no", "yes"],
        "options": [YES_NO, YES_NO],
        "question_type": ["presence", "presence"],
        "prompt_format": ["think", "no_think"],
        "id": ["q1", "q2"],
        "question": ["Is there a nodule?"] * 2,
        "volume_name": ["v.nii.gz"] * 2,
        "completion_length": [10, 100],
        "max_completion_length": [100, 100],
    }
    funcs = [accuracy_reward, format_reward, validity_reward, LengthPenalty(buffer=10), RepetitionPenalty()]
    scores, errors = score_completions(funcs, completions, fields)
    assert scores.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 0.0]]
    assert errors == dict.fromkeys(map(reward_name, funcs), 0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_score_completions_non_finite_raises_naming_reward_and_sample(value):
    with pytest.raises(RewardError, match=r"'reward'.*sample 1 \(id 'q-b'\).*'b'"):
        score_completions([const(1.0, value)], ["a", "b"], FIELDS)


def test_score_completions_non_finite_becomes_none_when_asked():
    scores, errors = score_completions([nan_at_one, const(3, 4)], ["a", "b"], FIELDS, on_error="none")
    assert scores[0].tolist() == [1.0, 3.0] and scores[1, 0].isnan() and scores[1, 1] == 4.0
    assert errors == {"nan_at_one": 1, "reward": 0}


def test_score_completions_raising_reward_names_the_failing_sample():
    with pytest.raises(RewardError, match=r"'raises_on_b' raised KeyError on sample 1 \(id 'q-b'\)") as info:
        score_completions([raises_on_b], ["a", "b"], FIELDS)
    assert isinstance(info.value.__cause__, KeyError)


def test_score_completions_error_message_truncates_long_completions():
    long = "x" * 1000
    with pytest.raises(RewardError) as info:
        score_completions([const(math.nan)], [long], {})
    assert "sample 0," in str(info.value) and "x" * 200 + "…" in str(info.value)
    assert "x" * 201 not in str(info.value)


def test_score_completions_raising_reward_voids_its_column_when_asked():
    scores, errors = score_completions([const(1, 2), raises_on_b], ["a", "b"], FIELDS, on_error="none")
    assert scores[:, 0].tolist() == [1.0, 2.0] and scores[:, 1].isnan().all()
    assert errors == {"reward": 0, "raises_on_b": 2}


@pytest.mark.parametrize("on_error", ["raise", "none"])
@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([1.0], "expected 2, got 1"),
        ([1.0, 2.0, 3.0], "expected 2, got 3"),
        ("ab", "got str"),
        (1.0, "got float"),
        ([1.0, "yes"], "'yes' at index 1"),
    ],
)
def test_score_completions_malformed_output_always_raises(output, message, on_error):
    with pytest.raises(RewardError, match=rf"'reward'.*{message}"):
        score_completions([returns(output)], ["a", "b"], {}, on_error=on_error)


def test_score_completions_checks_field_lengths_and_handles_no_rewards():
    with pytest.raises(ValueError, match="'id' has 1 entries for 2"):
        score_completions([const(1, 2)], ["a", "b"], {"id": ["q"]})
    scores, errors = score_completions([], ["a", "b"], FIELDS)
    assert scores.shape == (2, 0) and errors == {}


def test_score_completions_batch_only_failure_names_the_batch():
    def needs_one(completions, **_):
        if len(completions) > 1:
            raise RuntimeError("batched call failed")
        return [1.0]

    with pytest.raises(RewardError, match=r"'needs_one' raised RuntimeError on a batch of 2.*batched call failed"):
        score_completions([needs_one], ["a", "b"], FIELDS)


def test_score_completions_accepts_array_and_tensor_outputs():
    import numpy as np

    def as_array(completions, **_):
        return np.array([0.5] * len(completions))

    def as_tensor(completions, **_):
        return torch.tensor([1.0, float("nan")])

    scores, errors = score_completions([as_array, as_tensor], ["a", "b"], {}, on_error="none")
    assert scores[:, 0].tolist() == [0.5, 0.5] and scores[0, 1].item() == 1.0
    assert math.isnan(scores[1, 1].item()) and errors["as_tensor"] == 1


def test_evidence_view_reward_pays_a_named_lesion_view_only_with_the_right_answer():
    from rewards.evidence import evidence_view_reward, named_view

    views = [{"shows_lesion": False}, {"shows_lesion": True}, {"shows_lesion": False}]
    right = "<think>Evidence: View 2. A round opacity.</think><answer>yes</answer>"
    completions = [
        right,
        "<think>View 1 looks clear.</think><answer>yes</answer>",  # names a view without the lesion
        "<think>Evidence: View 2.</think><answer>no</answer>",  # the right view, the wrong answer
        "<think>No view named.</think><answer>yes</answer>",
        "<think>Evidence: View 9.</think><answer>yes</answer>",  # no such view
        right,  # the true answer is no: nothing to point at
        right,  # no lesion mask: not applicable
        right,  # a single-slice question
    ]
    answers = ["yes"] * 5 + ["no", "yes", "yes"]
    shown = [views] * 6 + [[{"shows_lesion": None}] * 3, None]
    got = evidence_view_reward(completions, answers, [["yes", "no"]] * 8, shown)
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0, None, None, None]
    assert named_view("the evidence is view 3, then View 1") == 3 and named_view("overview 2") is None
