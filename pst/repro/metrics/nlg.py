"""NLG metrics for E2E, DART and WebNLG, offline, matching the challenges' official scripts.

- :func:`e2e_scores` reproduces e2e-metrics' ``measure_scores.py`` in Python mode (``-p``, as
  LoRA's recipe runs it): BLEU and NIST from its ``pymteval`` (see :mod:`pst.repro.metrics.nist`),
  METEOR 1.5, ROUGE-L and CIDEr-D from the coco-caption code, on the Stanford PTB tokenisation
  (lower-cased, punctuation removed) that coco-caption applies.
- :func:`webnlg_scores` reproduces WebNLG GenerationEval's ``eval.py`` (also used for DART):
  BLEU as ``multi-bleu-detok.perl`` (sacrebleu, 13a tokenisation, no smoothing), METEOR 1.5
  with ``-norm`` over all references, and TER as the mean over items of the lowest pyter TER
  against the references, the last two on nltk ``word_tokenize`` output.

Units: BLEU, METEOR, ROUGE_L and WebNLG's TER are percentages (0-100); NIST and CIDEr are raw.
The official scripts print E2E BLEU/METEOR/ROUGE_L as fractions (0-1) and WebNLG METEOR/TER as
fractions rounded to 2 decimals (WebNLG BLEU is already 0-100): our value = 100 x theirs.

Variable reference counts: ``eval.py`` needs one reference file per reference slot, so items
with fewer references have empty lines there. We treat missing references exactly as it treats
those empty lines (an empty reference for BLEU's closest length and METEOR; TER 1 for TER).
E2E's Python mode takes each item's own references, with no padding.

Java: the METEOR jar and the Stanford PTB tokenizer (both shipped with pycocoevalcap) need
``java``. Without it METEOR is ``None`` (a warning is logged), and E2E's ROUGE_L and CIDEr use
:func:`ptb_like_tokenize`, a Python approximation of the PTB tokenizer (also warned about).

nltk (``eval.py``'s tokenizer) is not a dependency: :func:`nltk_like_word_tokenize` reproduces
nltk 3.5's Treebank word tokenizer exactly, and approximates its Punkt sentence splitter (only
where a sentence ends matters: it decides whether a word-final period is split off).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pycocoevalcap
import pyter
import sacrebleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from pst.repro.metrics.nist import clipped_hits, mteval_tokenize, nist_score

logger = logging.getLogger(__name__)

_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
E2E_MODULE_PATH = str(_MODULES_DIR / "pst_e2e")  # evaluate.load(E2E_MODULE_PATH), offline
WEBNLG_MODULE_PATH = str(_MODULES_DIR / "pst_webnlg")

_COCO_DIR = Path(next(iter(pycocoevalcap.__path__)))
METEOR_JAR = _COCO_DIR / "meteor" / "meteor-1.5.jar"
CORENLP_JAR = _COCO_DIR / "tokenizer" / "stanford-corenlp-3.4.1.jar"

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
WEBNLG_METRICS = ("BLEU", "METEOR", "TER")


# --------------------------------------------------------------------------- shared helpers


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def validate_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ValueError naming the problem, before any expensive work starts."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list of lists of strings, got {type(references).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} predictions, "
            f"{len(references)} reference lists (one list of references per prediction)"
        )
    if not predictions:
        raise ValueError("predictions is empty: at least one prediction is needed")
    for i, pred in enumerate(predictions):
        if not isinstance(pred, str):
            raise ValueError(f"prediction {i} is {type(pred).__name__}, expected str")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references[{i}] must be a list of strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is an empty list: every prediction needs >= 1 reference")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] is {type(ref).__name__}, expected str")


def _warn_no_java(what: str) -> None:
    logger.warning("Java is not on PATH: %s. Install a JRE (e.g. openjdk-17-jre) to get it.", what)


# --------------------------------------------------------------------------- E2E: BLEU


def _e2e_bleu(predictions: Sequence[list[str]], references: Sequence[list[list[str]]]) -> float:
    """Corpus BLEU as e2e-metrics' pymteval: clipped n-gram precisions up to 4 with the official
    script's tiny floors (hits >= 1e-15, lengths >= 1e-9: never undefined, ~0 when no match),
    closest reference length (ties: shorter), brevity penalty. Returns a fraction."""
    max_n = 4
    hits = [0] * max_n
    lengths = [0] * max_n
    ref_length = 0
    out_length = 0
    for pred, refs in zip(predictions, references):
        for n in range(1, max_n + 1):
            hits[n - 1] += sum(clipped_hits(pred, refs, n).values())
            lengths[n - 1] += len(pred) - n + 1
        out_length += len(pred)
        ref_length += min((abs(len(r) - len(pred)), len(r)) for r in refs)[1]
    log_precision = sum(math.log(max(h, 1e-15) / max(c, 1e-9)) for h, c in zip(hits, lengths))
    precision = math.exp(log_precision / max_n)
    penalty = 1.0
    if out_length <= ref_length:
        penalty = math.exp(1.0 - ref_length / (out_length if out_length else 1e-5))
    return penalty * precision


# --------------------------------------------------------------------------- E2E: coco-caption

# Tokens coco-caption drops after PTB tokenisation. Note the lower-cased "-lrb-" etc. are NOT in
# it (the list has upper-case forms and the tokenizer runs with -lowerCase): kept, as officially.
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


def _drop_coco_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in COCO_PUNCTUATION)


def ptb_tokenize_java(texts: Sequence[str]) -> list[str]:
    """coco-caption's tokenisation: Stanford PTBTokenizer -preserveLines -lowerCase, one Java
    process for all texts, then punctuation tokens dropped."""
    with tempfile.TemporaryDirectory(prefix="pst-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        # one line per text (a \r would also end a line for Java: blank it like \n)
        path.write_text("\n".join(re.sub(r"[\r\n]", " ", t) for t in texts), encoding="utf-8")
        cmd = ["java", "-cp", str(CORENLP_JAR), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(path)]
        proc = subprocess.run(cmd, capture_output=True, check=True)
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) not in (len(texts), len(texts) + 1):  # +1: a final newline
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} texts")
    return [_drop_coco_punctuation(line) for line in lines[: len(texts)]]


_PTB_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr co inc ltd corp prof vs etc al no approx dept est ft mt rd ave blvd univ "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_PTB_ACRONYM = re.compile(r"^(?:[^\W\d_]\.)*[^\W\d_]$")  # u.s, d.c, e.g, a.m: keep their period
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_CURRENCY = {"£": "#", "€": "$", "¢": "cents"}
_PTB_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'m", "'d")
_PTB_CONTRACTION = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'m|'d)$")
_PTB_SPLIT = re.compile(r"""(\.\.\.|--|[—–]|[()\[\]{}"“”‘’`;!?%&@~|=<>#$£€¢]|,(?!\d)|:(?!\d)|\+(?!\d))""")


def _ptb_keeps_period(stem: str) -> bool:
    """Whether PTB keeps a word-final period on ``stem`` (an abbreviation or acronym)."""
    return stem in _PTB_ABBREVIATIONS or bool(_PTB_ACRONYM.match(stem))


def _ptb_word(word: str) -> list[str]:
    """Split one whitespace-free chunk: leading/trailing quotes, final period, contractions."""
    tokens: list[str] = []
    while word.startswith("'") and len(word) > 1 and word not in _PTB_CLITICS:
        tokens.append("'")
        word = word[1:]
    trailing: list[str] = []
    if word.endswith(".") and len(word) > 1:
        stem = word[:-1]
        if stem.endswith(".") or not _ptb_keeps_period(stem):
            word, trailing = stem, ["."]
    if word.endswith("'") and len(word) > 1:
        word, trailing = word[:-1], ["'", *trailing]
    match = _PTB_CONTRACTION.match(word)
    tokens.extend([match.group(1), match.group(2)] if match else [word])
    return tokens + trailing


def ptb_like_tokenize(text: str) -> str:
    """Pure-Python approximation of coco-caption's PTB tokenisation, for machines without Java.

    It agrees with the Java tokenizer on ordinary E2E sentences (checked in the tests), not on
    every corner (rare abbreviations, odd Unicode): treat ROUGE_L/CIDEr from it as approximate.
    """
    text = text.lower()
    for symbol, word in _PTB_CURRENCY.items():
        text = text.replace(symbol, f" {word} ")
    text = _PTB_SPLIT.sub(r" \1 ", text)
    tokens: list[str] = []
    for chunk in text.split():
        if chunk in _PTB_BRACKETS:
            tokens.append(_PTB_BRACKETS[chunk])
        elif chunk in COCO_PUNCTUATION or set(chunk) == {"."}:
            tokens.append(chunk)
        elif chunk in "—–":
            tokens.append("--")
        elif chunk in {'"', "“", "”"}:
            tokens.append("''")
        else:
            tokens.extend(_ptb_word(chunk))
    return " ".join(t for t in tokens if t and t not in COCO_PUNCTUATION)


def _coco_tokenize(texts: Sequence[str], use_java: bool) -> list[str]:
    if use_java:
        return ptb_tokenize_java(texts)
    return [ptb_like_tokenize(t) for t in texts]


def _read_float(line: str) -> float:
    try:
        return float(line.strip())
    except ValueError:
        raise RuntimeError(f"METEOR answered {line!r} where a score was expected") from None


class MeteorServer:
    """One ``meteor-1.5.jar - - -stdio -l en -norm`` process, reused by every METEOR score.

    Starting METEOR's JVM (it loads the paraphrase table) takes ~5 s, which dominates scoring
    small inputs, so a Python process starts it once, lazily, and keeps it (see
    :func:`meteor_server`). The stdio protocol is coco-caption's: per item a
    ``SCORE ||| ref1 ||| ... ||| hyp`` line answered by a line of statistics, then
    ``EVAL ||| stats1 ||| ...`` answered by one score per item and the corpus score (from the
    summed statistics, not a mean of sentence scores). Thread-safe; a process that died (or was
    inherited over a fork) is replaced; closed at interpreter exit.
    """

    CMD = ("java", "-jar", "-Xmx2G", str(METEOR_JAR), "-", "-", "-stdio", "-l", "en", "-norm")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner_pid = 0

    def _process(self) -> subprocess.Popen:
        proc = self._proc
        if proc is None or proc.poll() is not None or self._owner_pid != os.getpid():
            proc = subprocess.Popen(self.CMD, cwd=METEOR_JAR.parent, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, encoding="utf-8")
            self._proc, self._owner_pid = proc, os.getpid()
        return proc

    def corpus_score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """Corpus METEOR (a fraction). Texts must not contain ``|||`` or line breaks."""
        with self._lock:
            proc = self._process()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                stats = []
                for hyp, refs in zip(hypotheses, references):
                    proc.stdin.write(" ||| ".join(["SCORE", *refs, hyp]) + "\n")
                    proc.stdin.flush()
                    stats.append(proc.stdout.readline().strip())
                proc.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
                proc.stdin.flush()
                for _ in stats:
                    proc.stdout.readline()
                return _read_float(proc.stdout.readline())
            except BaseException:
                self._stop()  # the conversation is out of step: the next call starts afresh
                raise

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or self._owner_pid != os.getpid():
            return
        try:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - a stuck or broken process is killed instead
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()  # type: ignore[union-attr]

    def close(self) -> None:
        with self._lock:
            self._stop()


_METEOR_SERVER: MeteorServer | None = None
_METEOR_SERVER_LOCK = threading.Lock()


def meteor_server() -> MeteorServer:
    """The process-wide :class:`MeteorServer`, created on first use and closed at exit."""
    global _METEOR_SERVER
    with _METEOR_SERVER_LOCK:
        if _METEOR_SERVER is None:
            _METEOR_SERVER = MeteorServer()
            atexit.register(_METEOR_SERVER.close)
        return _METEOR_SERVER


def meteor_stdio(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """coco-caption's METEOR (``-stdio -l en -norm``; it deletes ``|||`` from hypotheses and
    squeezes the double spaces that leaves). Returns a fraction."""
    preds = [p.replace("|||", "").replace("  ", " ") for p in predictions]
    return meteor_server().corpus_score(preds, references)


def _coco_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """METEOR, ROUGE_L and CIDEr(-D) as coco-caption computes them, on PTB-tokenised text."""
    use_java = java_available()
    if not use_java:
        _warn_no_java("METEOR is unavailable (None) and ROUGE_L/CIDEr use an approximate "
                      "Python PTB tokenizer instead of Stanford's")
    flat_refs = [r for refs in references for r in refs]
    tokenized = _coco_tokenize([*flat_refs, *predictions], use_java)
    tok_preds = tokenized[len(flat_refs):]
    tok_refs, start = [], 0
    for refs in references:
        tok_refs.append(tokenized[start : start + len(refs)])
        start += len(refs)
    gts = {i: refs for i, refs in enumerate(tok_refs)}
    res = {i: [pred] for i, pred in enumerate(tok_preds)}
    return {
        "METEOR": meteor_stdio(tok_preds, tok_refs) if use_java else None,
        "ROUGE_L": float(Rouge().compute_score(gts, res)[0]),
        "CIDEr": float(Cider().compute_score(gts, res)[0]),
    }


def e2e_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU, NIST, METEOR, ROUGE_L, CIDEr as the E2E challenge script (Python mode).

    BLEU, METEOR, ROUGE_L in percent; NIST, CIDEr raw; METEOR is None without Java.
    """
    validate_inputs(predictions, references)
    tok_preds = [mteval_tokenize(p) for p in predictions]
    tok_refs = [[mteval_tokenize(r) for r in refs] for refs in references]
    coco = _coco_scores(predictions, references)
    return {
        "BLEU": 100.0 * _e2e_bleu(tok_preds, tok_refs),
        "NIST": nist_score(tok_preds, tok_refs),
        "METEOR": None if coco["METEOR"] is None else 100.0 * coco["METEOR"],
        "ROUGE_L": 100.0 * coco["ROUGE_L"],
        "CIDEr": coco["CIDEr"],
    }


# --------------------------------------------------------------------------- WebNLG: tokenizer

# nltk 3.5 Treebank ("NLTKWordTokenizer") rules, in its order. Each: (pattern, replacement).
_TB_STARTING_QUOTES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"""([ (\[{<])("|'{2})"""), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2"),
]
_TB_PUNCTUATION = [
    (re.compile(r"""([^.])(\.)([\])}>"'»”’ ]*)\s*$"""), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"""([^.])(\.)([\])}>"']*)\s*$"""), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
]
_TB_BRACKETS = (re.compile(r"[\][(){}<>]"), r" \g<0> ")
_TB_DASHES = (re.compile(r"--"), r" -- ")
_TB_ENDING_QUOTES = [
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_TB_CONTRACTIONS = [
    re.compile(p)
    for p in (
        r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
        r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(mor)('n)\b", r"(?i)\b(wan)(na)\s",
        r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b",
    )
]


def treebank_tokenize(sentence: str) -> list[str]:
    """nltk 3.5's improved Treebank word tokenizer on one sentence."""
    text = sentence
    for pattern, repl in _TB_STARTING_QUOTES + _TB_PUNCTUATION + [_TB_BRACKETS, _TB_DASHES]:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _TB_ENDING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _TB_CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


# Punkt's English model (nltk_data, Apache-2.0): the abbreviation types it learned (a period
# after these does not end a sentence) and its sentence starters. Punkt also uses orthographic
# statistics of ~20k words to decide whether a capitalised word after an abbreviation or initial
# starts a sentence; we approximate that with common function words (_COMMON_STARTERS).
_PUNKT_ABBREVIATIONS = frozenset(
    "a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t c.o.m.b c.v "
    "calif chg cie co col colo conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g f.j "
    "feb fla fri ft g g.d g.f g.k ga gen h h.c h.f h.m i.m.s ill inc j.b j.c j.j j.k j.p j.r jan "
    "jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c m.j maj messrs mg mich minn mr mrs ms n n.c "
    "n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa ph.d prof r r.a r.h r.i r.j "
    "r.k r.t rep reps s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn tues u.k u.n "
    "u.s u.s.a u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr".split()
)
_PUNKT_STARTERS = frozenset(
    "according although among both but despite even he however i if in indeed instead it many "
    "meanwhile moreover most nevertheless nonetheless nor sales separately similarly since so some "
    "the there these they this though thus under when while yet".split()
)
_COMMON_STARTERS = frozenset(
    "a an she we you that those his her its their our on at as and also one another which who "
    "after before during from for with by to of".split()
)
_CLOSERS = "\"')]}»”’"
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.\-]*\.?$")


def _starts_sentence(word: str) -> bool:
    """Whether a capitalised ``word`` after an abbreviation/initial still opens a sentence."""
    bare = word.lstrip(_CLOSERS + "(`“‘[{")
    if not bare or not bare[0].isupper():
        return False
    return bare.lower().rstrip(".,;:") in _PUNKT_STARTERS | _COMMON_STARTERS


def _ends_sentence(chunk: str, next_chunk: str) -> bool:
    """Punkt-like decision whether the sentence ends after ``chunk`` (followed by ``next_chunk``)."""
    core = chunk.rstrip(_CLOSERS)
    if not core:
        return False
    if core[-1] in "?!":
        return True
    if core[-1] != ".":
        return False
    word = core[:-1].lstrip("\"'([{`“‘").lower()
    if core.endswith(".."):  # ellipsis
        return _starts_sentence(next_chunk)
    if _NUMBER.match(word):
        return not (next_chunk and (next_chunk[0].islower() or next_chunk[0] in ";:,.!?"))
    if word in _PUNKT_ABBREVIATIONS or word.split("-")[-1] in _PUNKT_ABBREVIATIONS:
        return len(word) > 1 and _starts_sentence(next_chunk)
    if len(word) == 1 and word.isalpha():  # an initial Punkt does not know as an abbreviation
        return _starts_sentence(next_chunk)
    return True


def split_sentences(text: str) -> list[str]:
    """Approximate Punkt (English) sentence splitting, at whitespace after a sentence end."""
    chunks = list(re.finditer(r"\S+", text))
    sentences, start = [], 0
    for current, following in zip(chunks, chunks[1:]):
        if _ends_sentence(current.group(), following.group()):
            sentences.append(text[start : current.end()])
            start = following.start()
    if chunks:
        sentences.append(text[start : chunks[-1].end()])
    return sentences


def nltk_like_word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize`` as eval.py uses it: sentence split, then Treebank per sentence."""
    return [tok for sentence in split_sentences(text) for tok in treebank_tokenize(sentence)]


# --------------------------------------------------------------------------- WebNLG: metrics


def _pad_references(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Pad each item's references with "" up to the largest count, as eval.py's files are."""
    width = max(len(refs) for refs in references)
    return [list(refs) + [""] * (width - len(refs)) for refs in references]


def _webnlg_bleu(predictions: Sequence[str], padded: Sequence[Sequence[str]]) -> float:
    """multi-bleu-detok.perl: 13a tokenisation, case-sensitive, no smoothing, 0-100."""
    streams = [list(stream) for stream in zip(*padded)]
    bleu = sacrebleu.corpus_bleu(list(predictions), streams, smooth_method="none", tokenize="13a", force=True)
    return float(bleu.score)


def _stdio_safe(text: str) -> bool:
    """Whether stdio mode reads ``text`` as files mode does: it splits lines on ``|||`` and
    trims each field (Java's trim drops characters <= U+0020), while files mode splits on
    line breaks only."""
    return "|||" not in text and text == text.strip(" ") and all(c >= " " for c in text)


def meteor_files(predictions: Sequence[str], padded: Sequence[Sequence[str]]) -> float:
    """eval.py's METEOR: ``meteor-1.5.jar hyp ref -l en -norm -r N`` on files. Files mode sums
    the same per-item statistics as stdio mode (empty references included), so texts that stdio
    reads unchanged go through the shared :class:`MeteorServer`; others run files mode itself."""
    if all(_stdio_safe(t) for t in predictions) and all(_stdio_safe(r) for refs in padded for r in refs):
        return meteor_server().corpus_score(predictions, padded)
    width = len(padded[0])
    with tempfile.TemporaryDirectory(prefix="pst-meteor-") as tmp:
        hyp_file, ref_file = Path(tmp) / "hypothesis", Path(tmp) / "reference"
        # One line per text, each newline-terminated: eval.py joins without the final newline,
        # so METEOR drops an empty last hypothesis and fails (eval.py then reports -1).
        hyp_file.write_text("".join(f"{p}\n" for p in predictions), encoding="utf-8")
        ref_file.write_text("".join(f"{r}\n" for refs in padded for r in refs), encoding="utf-8")
        cmd = ["java", "-Xmx2G", "-jar", str(METEOR_JAR), str(hyp_file), str(ref_file),
               "-l", "en", "-norm", "-r", str(width)]
        proc = subprocess.run(cmd, cwd=METEOR_JAR.parent, capture_output=True, check=True)
    match = re.search(rb"Final score:\s*(\S+)", proc.stdout)
    if match is None:
        raise RuntimeError(f"METEOR printed no final score: {proc.stdout[-500:]!r}")
    return float(match.group(1))


def _sentence_ter(prediction: str, reference: str) -> float:
    """pyter TER as eval.py calls it: empty reference or any failure counts as 1."""
    if len(reference) == 0:
        return 1.0
    try:
        return float(pyter.ter(prediction.split(), reference.split()))
    except Exception:  # noqa: BLE001 - eval.py scores any pyter failure as 1; so do we
        return 1.0


def _webnlg_ter(predictions: Sequence[str], padded: Sequence[Sequence[str]]) -> float:
    """Mean over items of the lowest TER against the item's references (fraction)."""
    best = [min(_sentence_ter(p, r) for r in refs) for p, refs in zip(predictions, padded)]
    return sum(best) / len(best)


def webnlg_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU, METEOR, TER as WebNLG GenerationEval's eval.py (all 0-100; METEOR None without Java)."""
    validate_inputs(predictions, references)
    padded = _pad_references(references)
    tok_preds = [" ".join(nltk_like_word_tokenize(p)) for p in predictions]
    tok_refs = [[" ".join(nltk_like_word_tokenize(r)) for r in refs] for refs in padded]
    meteor = None
    if java_available():
        meteor = 100.0 * meteor_files(tok_preds, tok_refs)
    else:
        _warn_no_java("METEOR is unavailable (None)")
    return {
        "BLEU": _webnlg_bleu(predictions, padded),
        "METEOR": meteor,
        "TER": 100.0 * _webnlg_ter(tok_preds, tok_refs),
    }
