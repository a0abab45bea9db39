"""NLG metrics against the official E2E and WebNLG scripts.

Expected "official" numbers below were produced by running the official scripts on this machine:
e2e-metrics (github.com/tuetschek/e2e-metrics @ 1b9c4d8, ``measure_scores.py``'s
``run_coco_eval`` + ``run_pymteval``, i.e. ``-p`` Python mode; Java 17, the same
meteor-1.5.jar / stanford-corenlp-3.4.1.jar blobs as pycocoevalcap 1.2) and WebNLG
GenerationEval (github.com/WebNLG/GenerationEval @ 8067849, ``eval.py``'s ``run(...,
metrics="bleu,meteor,ter")`` with nltk 3.5 + Punkt English, perl multi-bleu-detok, the same
METEOR jar; reference files reference0..N-1 padded with empty lines as its README says).
E2E values are printed by the script as fractions; ours are percentages (x100).

Fast tests need no Java (METEOR is stubbed or Java hidden); ``slow`` ones run METEOR (~20 s
each, it loads its paraphrase table) and are skipped without Java.
"""

from __future__ import annotations

import logging
import subprocess
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pst.repro.metrics import nlg
from pst.repro.metrics.nist import mteval_tokenize, nist_score

needs_java = pytest.mark.skipif(not nlg.java_available(), reason="java is not installed")

# ----------------------------------------------------------------------------- cases

E2E_SMALL = dict(
    predictions=[
        "The Eagle is a cheap coffee shop near Burger King.",
        "Zizzi is a family-friendly pub in the city centre, rated 5 out of 5!",
        "There is an expensive Italian restaurant called Loch Fyne.",
    ],
    references=[
        ["The Eagle is a low-priced coffee shop near Burger King.",
         "Near Burger King there is a cheap coffee shop, The Eagle."],
        ["Zizzi is a kid friendly pub in the city centre with a 5 out of 5 rating."],
        ["Loch Fyne is a high-priced Italian restaurant.", "An expensive Italian place is Loch Fyne.",
         "Loch Fyne serves Italian food at high prices (£30+)."],
    ],
)
# official e2e-metrics (Python mode), x100 where the script gives fractions
E2E_SMALL_OFFICIAL = {"BLEU": 56.82193251732811, "NIST": 4.78004032169376, "METEOR": 44.24799610191399,
                      "ROUGE_L": 76.67759196061082, "CIDEr": 4.2999374544820865}

# empty prediction first, casing, punctuation, £, quotes, 1-3 references per item
E2E_EDGE = dict(
    predictions=[
        "",
        "THE EAGLE is a cheap coffee shop, near Burger King & the river (£20-25)!",
        "Zizzi isn't family-friendly; it's a pub... rated 5 out of 5.",
        'Loch Fyne serves "Italian" food.',
    ],
    references=[
        ["The Vaults is an Italian pub.", "The Vaults serves Italian food."],
        ["The Eagle is a cheap coffee shop near Burger King and the river, with prices of £20-25."],
        ["Zizzi is not family-friendly. It is a pub rated 5 out of 5.",
         "Zizzi, a pub, is not kid friendly and is rated 5 out of 5.",
         "Rated 5 out of 5, Zizzi is an adults-only pub."],
        ["Loch Fyne serves Italian food.", "Italian food is served at Loch Fyne."],
    ],
)
E2E_EDGE_OFFICIAL = {"BLEU": 35.877335275151395, "NIST": 4.150142311301787, "METEOR": 46.058275739407156,
                     "ROUGE_L": 66.05132984443329, "CIDEr": 4.223310259245091}

# two references everywhere: here the Perl mteval-v13a-sig.pl run agrees (NIST 5.0222, BLEU 0.6565)
E2E_CONST = dict(
    predictions=[
        "The Eagle is a cheap coffee shop near Burger King.",
        "Zizzi is a family-friendly pub in the city centre.",
        "There is an expensive Italian restaurant called Loch Fyne.",
    ],
    references=[
        ["The Eagle is a low-priced coffee shop near Burger King.",
         "Near Burger King there is a cheap coffee shop, The Eagle."],
        ["Zizzi is a kid friendly pub in the city centre.", "In the city centre, Zizzi is a family friendly pub."],
        ["Loch Fyne is a high-priced Italian restaurant.", "An expensive Italian place is Loch Fyne."],
    ],
)
E2E_CONST_OFFICIAL = {"BLEU": 65.65460569253766, "NIST": 5.0222078929430936, "ROUGE_L": 79.12003440305327,
                      "CIDEr": 4.691066636499396}

WEBNLG_SMALL = dict(
    predictions=[
        "Alan Bean was born in Wheeler, Texas. He is a test pilot.",
        "The Acharya Institute of Technology is in Bangalore, India.",
        "Aarhus Airport's runway length is 2,776.0 metres.",
    ],
    references=[
        ["Alan Bean, born in Wheeler, Texas, was a test pilot.",
         "Alan Bean was a test pilot who was born in Wheeler, Texas."],
        ["Acharya Institute of Technology is located in Bangalore, India."],
        ["The runway length of Aarhus Airport is 2776.0.", "Aarhus Airport has a runway length of 2,776.0 metres.",
         "The length of the runway at Aarhus airport is 2776.0 metres."],
    ],
)
# official eval.py: BLEU 58.45 (printed with 2 decimals), METEOR 0.4900619725289801, TER 0.2558441558441558
WEBNLG_SMALL_OFFICIAL = {"BLEU": 58.45, "METEOR": 49.00619725289801, "TER": 25.58441558441558}

WEBNLG_EDGE = dict(
    predictions=[
        "",
        'The Eagle, a cheap pub, isn\'t near "Burger King" (in the city centre).',
        "ALAN BEAN was born in Wheeler. He is 82.",
    ],
    references=[
        ["Alan Bean is a test pilot.", "Alan Bean was a pilot."],
        ["The Eagle is a cheap pub, it's not near Burger King in the city centre."],
        ["Alan Bean was born in Wheeler, Texas. He is 82 years old.", "Alan Bean, 82, was born in Wheeler.",
         "Born in Wheeler, Alan Bean is 82."],
    ],
)
WEBNLG_EDGE_OFFICIAL = {"BLEU": 41.73, "METEOR": 35.56242739072088, "TER": 61.48148148148148}


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    """Hide java: PATH points at an empty folder."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not nlg.java_available()


@pytest.fixture
def stub_meteor(monkeypatch):
    """Keep Java's PTB tokenizer but skip the ~20 s METEOR start-up."""
    monkeypatch.setattr(nlg, "meteor_stdio", lambda preds, refs: 0.5)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("scores", [nlg.e2e_scores, nlg.webnlg_scores])
@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a", "b"], [["a"]], "differ in length"),
        (["a"], [[]], r"references\[0\] is an empty list"),
        ([], [], "predictions is empty"),
        ("a cat", [["a cat"]], "list of strings"),
        (["a"], ["a"], r"references\[0\] must be a list"),
        ([None], [["a"]], "prediction 0 is NoneType"),
        (["a"], [["a", 3]], r"references\[0\]\[1\] is int"),
    ],
)
def test_invalid_inputs_raise_value_error(scores, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        scores(predictions, references)


# ----------------------------------------------------------------------------- tokenisers


# Expected tokens checked against e2e-metrics' pymteval ``tokenize`` (lower-cased as it matches).
@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The Eagle, near Burger King.", ["the", "eagle", ",", "near", "burger", "king", "."]),
        ("£20-25 (3.5 stars), 1,000 visits", ["£20", "-", "25", "(", "3.5", "stars", ")", ",", "1,000", "visits"]),
        ("It's &quot;ok&quot;", ["it's", '"', "ok", '"']),  # the apostrophe is not split
        ("", [""]),  # as the official script: one empty token
    ],
)
def test_mteval_tokenize(text, tokens):
    assert mteval_tokenize(text) == tokens


# Expected tokens produced with nltk 3.5 ``word_tokenize`` (+ Punkt English), eval.py's tokenizer.
NLTK_35_TOKENS = {
    "Alan Bean was born in Wheeler, Texas. He is 82.":
        "Alan Bean was born in Wheeler , Texas . He is 82 .",
    'Dr. Smith lives in St. Louis. He was born in 1950. "Hi," he said (loudly).':
        "Dr. Smith lives in St. Louis . He was born in 1950 . `` Hi , '' he said ( loudly ) .",
    "It isn't 5.5 km away... They can't go; cannot! Really?":
        "It is n't 5.5 km away ... They ca n't go ; can not ! Really ?",
    "The U.S. Army's base is near Washington D.C. and New York.":
        "The U.S. Army 's base is near Washington D.C. and New York .",
    "B.M. Reddy is the President of the Acharya Institute of Technology.":
        "B.M . Reddy is the President of the Acharya Institute of Technology .",
    "Aarhus Airport's runway length is 2,776.0 metres.":
        "Aarhus Airport 's runway length is 2,776.0 metres .",
    "'Quoted' words -- and [brackets] {braces} <angles> @ #1 $5 50% & more*":
        "'Quoted ' words -- and [ brackets ] { braces } < angles > @ # 1 $ 5 50 % & more *",
    "": "",
}


@pytest.mark.parametrize(("text", "expected"), NLTK_35_TOKENS.items())
def test_nltk_like_word_tokenize_matches_nltk_35(text, expected):
    assert nlg.nltk_like_word_tokenize(text) == expected.split()


# Expected outputs produced by Stanford PTBTokenizer 3.4.1 (-preserveLines -lowerCase), then
# coco-caption's punctuation filter: what the E2E script feeds METEOR, ROUGE-L and CIDEr.
PTB_JAVA_OUTPUT = {
    "The Eagle is a cheap coffee shop near Burger King.": "the eagle is a cheap coffee shop near burger king",
    "Zizzi isn't family-friendly; it's a pub... rated 5 out of 5.":
        "zizzi is n't family-friendly it 's a pub rated 5 out of 5",
    "THE EAGLE (£20-25) is near the river!": "the eagle -lrb- # 20-25 -rrb- is near the river",
    'Loch Fyne serves "Italian" food, e.g. pasta. It\'s by Mr. Smith\'s place in the U.S.':
        "loch fyne serves italian food e.g. pasta it 's by mr. smith 's place in the u.s.",
    "The Wrestlers' prices are high -- customers' rating: 1 out of 5.":
        "the wrestlers prices are high customers rating 1 out of 5",
    "": "",
}


@pytest.mark.parametrize(("text", "expected"), PTB_JAVA_OUTPUT.items())
def test_python_ptb_fallback_matches_stanford_on_e2e_sentences(text, expected):
    assert nlg.ptb_like_tokenize(text) == expected


@needs_java
def test_java_ptb_tokenizer_output():
    assert nlg.ptb_tokenize_java(list(PTB_JAVA_OUTPUT)) == list(PTB_JAVA_OUTPUT.values())


# ----------------------------------------------------------------------------- E2E


def test_e2e_identical_and_disjoint(no_java):
    same = nlg.e2e_scores(["the eagle is a cheap pub near the river ."], [["The Eagle is a cheap pub near the river."]])
    assert same["BLEU"] == pytest.approx(100.0)
    assert same["ROUGE_L"] == pytest.approx(100.0)
    disjoint = nlg.e2e_scores(["alpha beta gamma delta epsilon"], [["one two three four five"]])
    assert disjoint["BLEU"] == pytest.approx(0.0, abs=1e-9)
    assert disjoint["NIST"] == 0.0
    assert disjoint["ROUGE_L"] == 0.0
    assert disjoint["CIDEr"] == 0.0


@pytest.mark.parametrize(
    ("case", "official"),
    [(E2E_SMALL, E2E_SMALL_OFFICIAL), (E2E_EDGE, E2E_EDGE_OFFICIAL), (E2E_CONST, E2E_CONST_OFFICIAL)],
)
def test_e2e_bleu_nist_match_official(no_java, case, official):
    scores = nlg.e2e_scores(**case)
    assert scores["BLEU"] == pytest.approx(official["BLEU"], rel=1e-12)
    assert scores["NIST"] == pytest.approx(official["NIST"], rel=1e-12)


@needs_java
@pytest.mark.parametrize(
    ("case", "official"),
    [(E2E_SMALL, E2E_SMALL_OFFICIAL), (E2E_EDGE, E2E_EDGE_OFFICIAL), (E2E_CONST, E2E_CONST_OFFICIAL)],
)
def test_e2e_rouge_cider_match_official(stub_meteor, case, official):
    scores = nlg.e2e_scores(**case)
    assert scores["ROUGE_L"] == pytest.approx(official["ROUGE_L"], rel=1e-12)
    assert scores["CIDEr"] == pytest.approx(official["CIDEr"], rel=1e-12)


def test_e2e_short_output_quirk_is_reproduced(no_java):
    """pymteval adds len-n+1 (negative for short outputs) to the n-gram totals and floors them at
    1e-9, so a tiny corpus with an empty output scores BLEU 199.99999999999991 (a fraction!) in
    the official script; we reproduce it rather than silently differ. Real test sets are long
    enough that the totals stay positive."""
    scores = nlg.e2e_scores(["a cheap pub.", ""], [["a cheap pub.", "an inexpensive pub"], ["x"]])
    assert scores["BLEU"] == pytest.approx(100 * 199.99999999999991, rel=1e-9)
    assert scores["NIST"] == pytest.approx(2.5333333333333337, rel=1e-12)


def test_e2e_bleu_is_case_insensitive_and_all_empty_is_zero(no_java):
    lower = nlg.e2e_scores(["the eagle is a pub near the river"], [["The Eagle is a pub by the river"]])
    upper = nlg.e2e_scores(["THE EAGLE IS A PUB NEAR THE RIVER"], [["The Eagle is a pub by the river"]])
    assert lower["BLEU"] == upper["BLEU"] and lower["NIST"] == upper["NIST"]
    empty = nlg.e2e_scores(["", ""], [["a pub"], ["a cheap pub", "x"]])
    assert empty["BLEU"] == pytest.approx(0.0, abs=1e-6)  # the official floors keep it just above 0
    assert empty["NIST"] == 0.0


def test_nist_length_penalty_and_empty_corpus():
    refs = [[["a", "b", "c", "d"]]]
    full = nist_score([["a", "b", "c", "d"]], refs)
    short = nist_score([["a", "b"]], refs)
    assert full > short > 0
    assert nist_score([[""]], [[["a"]]]) == 0.0


def test_e2e_without_java_warns_and_still_scores(no_java, caplog):
    with caplog.at_level(logging.WARNING, logger="pst.repro.metrics.nlg"):
        scores = nlg.e2e_scores(**E2E_SMALL)
    assert scores["METEOR"] is None
    assert "Java is not on PATH" in caplog.text and "METEOR is unavailable" in caplog.text
    # BLEU/NIST are exact without Java; ROUGE_L/CIDEr use the Python PTB approximation.
    assert scores["BLEU"] == pytest.approx(E2E_SMALL_OFFICIAL["BLEU"], rel=1e-12)
    assert scores["ROUGE_L"] == pytest.approx(E2E_SMALL_OFFICIAL["ROUGE_L"], rel=1e-9)
    assert scores["CIDEr"] == pytest.approx(E2E_SMALL_OFFICIAL["CIDEr"], rel=1e-9)


# ----------------------------------------------------------------------------- WebNLG


def test_webnlg_identical_and_disjoint(no_java):
    same = nlg.webnlg_scores(["Alan Bean was born in Wheeler, Texas."], [["Alan Bean was born in Wheeler, Texas."]])
    assert same["BLEU"] == pytest.approx(100.0)
    assert same["TER"] == 0.0
    disjoint = nlg.webnlg_scores(["alpha beta gamma delta"], [["one two three four"]])
    assert disjoint["BLEU"] == 0.0
    assert disjoint["TER"] == pytest.approx(100.0)


def test_webnlg_bleu_is_case_sensitive(no_java):
    scores = nlg.webnlg_scores(["ALAN BEAN WAS BORN IN WHEELER"], [["Alan Bean was born in Wheeler"]])
    assert scores["BLEU"] == 0.0


@pytest.mark.parametrize(("case", "official"), [(WEBNLG_SMALL, WEBNLG_SMALL_OFFICIAL), (WEBNLG_EDGE, WEBNLG_EDGE_OFFICIAL)])
def test_webnlg_bleu_ter_match_official(no_java, case, official):
    scores = nlg.webnlg_scores(**case)
    assert scores["BLEU"] == pytest.approx(official["BLEU"], abs=0.005)  # eval.py prints 2 decimals
    assert scores["TER"] == pytest.approx(official["TER"], rel=1e-12)


def test_webnlg_missing_references_act_as_eval_py_empty_lines(no_java):
    """eval.py pads reference files with empty lines: an empty prediction then meets an empty
    reference (length 0 for BLEU's closest length), and TER of an empty reference is 1. The
    official script gives BLEU 100.0 and TER 0.5 here."""
    scores = nlg.webnlg_scores(["a cheap pub.", ""], [["a cheap pub.", "an inexpensive pub"], ["x"]])
    assert scores["BLEU"] == pytest.approx(100.0)
    assert scores["TER"] == pytest.approx(50.0)


def test_webnlg_without_java_warns(no_java, caplog):
    with caplog.at_level(logging.WARNING, logger="pst.repro.metrics.nlg"):
        scores = nlg.webnlg_scores(**WEBNLG_SMALL)
    assert scores["METEOR"] is None
    assert "METEOR is unavailable" in caplog.text
    assert scores["TER"] == pytest.approx(WEBNLG_SMALL_OFFICIAL["TER"], rel=1e-12)


_WORDS = st.lists(st.sampled_from(["pub", "Eagle", "cheap", "river", "near", "5", "the", "is"]), min_size=4, max_size=12)


@settings(max_examples=25, deadline=None)
@given(words=_WORDS)
def test_webnlg_identical_text_is_perfect(words):
    text = " ".join(words)
    with mock.patch.object(nlg, "java_available", return_value=False):  # no 20 s METEOR per example
        scores = nlg.webnlg_scores([text], [[text, "something else entirely"]])
    assert scores["BLEU"] == pytest.approx(100.0)
    assert scores["TER"] == 0.0


# ----------------------------------------------------------------------------- evaluate modules


@pytest.mark.parametrize(
    ("path", "function", "case"),
    [(nlg.E2E_MODULE_PATH, nlg.e2e_scores, E2E_EDGE), (nlg.WEBNLG_MODULE_PATH, nlg.webnlg_scores, WEBNLG_EDGE)],
)
def test_evaluate_modules_load_by_path(no_java, path, function, case):
    import evaluate

    metric = evaluate.load(path)
    assert metric.compute(**case) == function(**case)


# ----------------------------------------------------------------------------- METEOR (slow)


@pytest.mark.slow
@needs_java
def test_e2e_all_metrics_match_official():
    scores = nlg.e2e_scores(**E2E_EDGE)
    assert set(scores) == set(nlg.E2E_METRICS)
    for name, value in E2E_EDGE_OFFICIAL.items():
        assert scores[name] == pytest.approx(value, rel=1e-9), name


@pytest.mark.slow
@needs_java
def test_webnlg_all_metrics_match_official():
    scores = nlg.webnlg_scores(**WEBNLG_EDGE)
    assert set(scores) == set(nlg.WEBNLG_METRICS)
    assert scores["BLEU"] == pytest.approx(WEBNLG_EDGE_OFFICIAL["BLEU"], abs=0.005)
    assert scores["METEOR"] == pytest.approx(WEBNLG_EDGE_OFFICIAL["METEOR"], rel=1e-9)
    assert scores["TER"] == pytest.approx(WEBNLG_EDGE_OFFICIAL["TER"], rel=1e-12)


@pytest.mark.slow
@needs_java
def test_meteor_jvm_is_started_once_per_process_and_restarted_if_dead(monkeypatch):
    starts = []
    real_popen = subprocess.Popen

    def counting_popen(cmd, *args, **kwargs):
        if str(nlg.METEOR_JAR) in map(str, cmd):
            starts.append(cmd)
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    server = nlg.meteor_server()
    server.close()
    e2e = (E2E_SMALL["predictions"], E2E_SMALL["references"])
    webnlg = (WEBNLG_SMALL["predictions"], nlg._pad_references(WEBNLG_SMALL["references"]))
    first = nlg.meteor_stdio(*e2e)
    pid = server._proc.pid
    assert nlg.meteor_files(*webnlg) > 0
    assert nlg.meteor_stdio(*e2e) == first
    assert nlg.meteor_server() is server and server._proc.pid == pid and len(starts) == 1

    server._proc.kill()
    server._proc.wait()
    assert nlg.meteor_stdio(*e2e) == first
    assert server._proc.pid != pid and len(starts) == 2
