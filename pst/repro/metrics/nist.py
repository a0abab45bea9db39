"""NIST (mteval-v13a family) and the mteval n-gram statistics that E2E's BLEU shares with it.

No maintained package provides the NIST score of ``mteval-v13a``: sacrebleu has BLEU, chrF and
TER only, and nltk's ``nist_score`` tokenises and sums differently. So this module is our own
implementation. It follows the *Python mode* of the E2E challenge script (``measure_scores.py
-p``, i.e. e2e-metrics' ``pymteval``), which is what LoRA's and PST's E2E recipe runs:

- tokenisation: mteval-v13a "basic" (sacrebleu's ``13a`` tokenizer is the same rules), then
  lower-cased (case-insensitive matching); an empty string tokenises to one empty token, as in
  the official script;
- informativeness of an n-gram from counts over *all reference sentences* of the corpus;
- per n-gram order, hits are clipped against the max count over the item's references, and the
  denominator is the sum over items of ``len(tokens) - n + 1`` (which can be negative for very
  short outputs: kept, as the official script does);
- length penalty on total output length against the sum of per-item *average* reference lengths.

With a variable number of references per item this differs from the Perl ``mteval-v13a-sig.pl``
run (the official script notes it); with a constant number they agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

Ngram = tuple[str, ...]

# mteval-v13a's NIST length-penalty constant: the penalty is 0.5 when output/ref length is 2/3.
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2
NIST_MAX_N = 5

_TOKENIZER_13A = Tokenizer13a()


@lru_cache(maxsize=2**16)
def _mteval_tokenize_cached(text: str) -> tuple[str, ...]:
    return tuple(tok.lower() for tok in _TOKENIZER_13A(text).split(" "))


def mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a basic tokenisation, lower-cased; ``""`` gives ``[""]`` as the official script."""
    return list(_mteval_tokenize_cached(text))


def ngrams(tokens: Sequence[str], n: int) -> list[Ngram]:
    """All contiguous n-grams of ``tokens`` (empty when ``len(tokens) < n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def max_ref_counts(references: Sequence[Sequence[str]], n: int) -> Counter:
    """Per n-gram, its highest count in any single reference: the clipping ceiling."""
    merged: Counter = Counter()
    for ref in references:
        for gram, count in Counter(ngrams(ref, n)).items():
            if count > merged[gram]:
                merged[gram] = count
    return merged


def clipped_hits(prediction: Sequence[str], references: Sequence[Sequence[str]], n: int) -> Counter:
    """Matched n-grams of the prediction, each clipped at its max count in one reference."""
    ceiling = max_ref_counts(references, n)
    pred_counts = Counter(ngrams(prediction, n))
    return Counter({g: min(c, ceiling[g]) for g, c in pred_counts.items() if ceiling[g] > 0})


def _reference_ngram_totals(references: Sequence[Sequence[Sequence[str]]], max_n: int) -> Counter:
    """Counts of every n-gram (n = 0..max_n) over all reference sentences; the 0-gram ``()``
    counts all reference tokens, so that unigram information is log2(total / count)."""
    totals: Counter = Counter()
    for refs in references:
        for ref in refs:
            totals[()] += len(ref)
            for n in range(1, max_n + 1):
                totals.update(ngrams(ref, n))
    return totals


def _information(gram: Ngram, totals: Counter) -> float:
    """NIST information weight of an n-gram: log2(count(prefix) / count(n-gram))."""
    if totals[gram] == 0:
        return 0.0
    return math.log2(totals[gram[:-1]] / totals[gram])


def nist_length_penalty(output_length: float, avg_ref_length: float) -> float:
    """mteval's brevity factor exp(-beta * log(ratio)^2), 1 for ratio >= 1, 0 for ratio <= 0."""
    if avg_ref_length <= 0:
        return 1.0 if output_length > 0 else 0.0
    ratio = output_length / avg_ref_length
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def nist_score(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    max_n: int = NIST_MAX_N,
) -> float:
    """Corpus NIST of tokenised predictions against tokenised references (E2E Python mode).

    Where the official script would divide by zero (no output n-gram of some order in the whole
    corpus, e.g. all outputs empty), that order contributes 0 instead.
    """
    totals = _reference_ngram_totals(references, max_n)
    score = 0.0
    for n in range(1, max_n + 1):
        info = 0.0
        length = 0
        for pred, refs in zip(predictions, references):
            length += len(pred) - n + 1
            info += sum(_information(g, totals) * c for g, c in clipped_hits(pred, refs, n).items())
        if length != 0:
            score += info / length
    output_length = sum(len(pred) for pred in predictions)
    avg_ref_length = sum(sum(len(r) for r in refs) / len(refs) for refs in references)
    return nist_length_penalty(output_length, avg_ref_length) * score
