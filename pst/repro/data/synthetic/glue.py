"""Synthetic GLUE: the real tasks' columns and label spaces, generated in code from a small vocabulary.

Smoke runs and tests need data without a download, and the data must carry a signal a
tiny model (2-layer BERT, hidden 64) learns in a few hundred steps, so that "PST trains"
is distinguishable from "PST does nothing". Each task keeps the *kind* of signal of the
real one:

- sst2: the majority polarity of the sentiment words decides the label.
- cola: an over-regularised verb form ("eated", "finded") makes a sentence unacceptable.
- mrpc, qqp: paraphrases/duplicates share subject, verb and object; the others either share at
  most one of them or negate the first sentence.
- stsb: the score is 5 x the fraction of the four content slots the pair shares, x 0.2 when the
  second sentence is negated (half the pairs), plus small noise.
- rte, qnli, mnli: entailment = the hypothesis restates the premise; contradiction (mnli) or
  not_entailment = a negation ("never", "did not") or a changed participant; mnli's neutral
  changes both participants.
- mnli's mismatched split uses place phrases never seen in train (a different "genre").

Two signals per pair task, on purpose: word overlap is the relation the real tasks test, but a
random-init tiny BERT takes a stochastic 300-1000+ steps to start matching words across the two
sentences; negation words are learnt within a few hundred steps, so smoke runs show learning on
every task. Pair sentences share one template so shared slots sit at aligned positions (all
place phrases have three words for the same reason), which shortens that plateau.

Every split is drawn from its own generator seeded by (task, split, seed), so changing one
split's size leaves the others unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import datasets

from ...glue_tasks import get_task
from ..glue_records import LABEL_COLUMN, glue_features

DEFAULT_TRAIN_SIZE = 512
DEFAULT_EVAL_SIZE = 128

SUBJECTS = ("cat", "dog", "child", "teacher", "farmer", "student", "doctor", "artist", "neighbor", "bird")
OBJECTS = ("apple", "book", "ball", "letter", "song", "garden", "house", "boat", "cake", "picture")
ADJECTIVES = ("red", "small", "old", "new", "big", "green", "round", "heavy")
# (base, past, over-regularised past): the wrong form is CoLA's unacceptability cue.
VERBS = (
    ("eat", "ate", "eated"), ("see", "saw", "seed"), ("find", "found", "finded"),
    ("build", "built", "builded"), ("write", "wrote", "writed"), ("take", "took", "taked"),
    ("bring", "brought", "bringed"), ("make", "made", "maked"), ("catch", "caught", "catched"),
    ("hold", "held", "holded"),
)
# Three words each, so sentences of one template have one length and pairs stay position-aligned.
PLACES = ("in the morning", "at the park", "near the school", "after the game", "on the beach", "by the lake")
# Only in mnli's validation_mismatched split: same rule, unseen context.
MISMATCHED_PLACES = ("during the storm", "at the market", "before the show", "in the city")
POSITIVE = ("good", "great", "wonderful", "excellent", "lovely", "charming", "brilliant", "fun")
NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "weak")
INTENSIFIERS = ("very", "really", "quite", "so")
REVIEW_NOUNS = ("movie", "film", "story", "plot", "acting", "ending", "music", "cast")
WH_WORDS = ("why", "how", "when", "where")
NEGATIONS = ("never", "did not")
FUNCTION_WORDS = ("the", "was", "and", "but", "never", "did", "not", "what", "who", ".", "?", ",")


def _vocabulary() -> tuple[str, ...]:
    words: list[str] = [*SUBJECTS, *OBJECTS, *ADJECTIVES, *POSITIVE, *NEGATIVE, *INTENSIFIERS,
                        *REVIEW_NOUNS, *WH_WORDS, *FUNCTION_WORDS]
    words += [form for verb in VERBS for form in verb]
    words += [w for phrase in (*PLACES, *MISMATCHED_PLACES) for w in phrase.split()]
    return tuple(dict.fromkeys(words))


VOCABULARY: tuple[str, ...] = _vocabulary()


@dataclass(frozen=True)
class _Clause:
    """The content slots of a simple sentence: who did what to which thing, where."""

    subject: str
    verb: tuple[str, str, str]
    obj: str
    adjective: str
    place: str

    def text(self, *, place: bool = False, negated: str = "", wrong_verb: bool = False) -> str:
        """``the S V the ADJ O [place] .``; ``negated`` is ``"never"`` or ``"did not"`` (base verb form)."""
        if negated == "did not":
            verb = f"did not {self.verb[0]}"
        else:
            verb = self.verb[2] if wrong_verb else self.verb[1]
            verb = f"never {verb}" if negated == "never" else verb
        where = f" {self.place}" if place else ""
        return f"the {self.subject} {verb} the {self.adjective} {self.obj}{where} ."

    def question(self, wh: str, negated: bool = False) -> str:
        return f"{wh} did the {self.subject} {'not ' if negated else ''}{self.verb[0]} the {self.obj} ?"


def _clause(rng: random.Random, places: tuple[str, ...] = PLACES) -> _Clause:
    return _Clause(rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ADJECTIVES),
                   rng.choice(places))


def _other(rng: random.Random, options: tuple, current: object) -> object:
    """A random option different from ``current``."""
    return rng.choice([o for o in options if o != current])


def _changed(rng: random.Random, c: _Clause, slots: tuple[str, ...]) -> _Clause:
    """``c`` with each named slot replaced by a different value."""
    values = {"subject": SUBJECTS, "verb": VERBS, "obj": OBJECTS, "adjective": ADJECTIVES}
    updates = {slot: _other(rng, values[slot], getattr(c, slot)) for slot in slots}
    return replace(c, **updates)


def _negation(rng: random.Random) -> str:
    return rng.choice(NEGATIONS)


# --------------------------------------------------------------------------- one example per task
# Each maker returns (texts, label) for a label drawn uniformly from the task's label space.

Example = tuple[tuple[str, ...], int | float]


def _sst2(rng: random.Random, places: tuple[str, ...]) -> Example:
    label = rng.randrange(2)
    major, minor = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
    n_major = rng.randint(1, 3)
    words = rng.sample(major, n_major) + rng.sample(minor, rng.randint(0, n_major - 1))
    rng.shuffle(words)
    parts = [f"{rng.choice(INTENSIFIERS)} {w}" if rng.random() < 0.3 else w for w in words]
    joiner = rng.choice((" and ", " but ", " , "))
    return (f"the {rng.choice(REVIEW_NOUNS)} was {joiner.join(parts)} .",), label


def _cola(rng: random.Random, places: tuple[str, ...]) -> Example:
    label = rng.randrange(2)  # 0 unacceptable, 1 acceptable
    return (_clause(rng, places).text(place=True, wrong_verb=label == 0),), label


def _paraphrase(rng: random.Random, places: tuple[str, ...], as_question: bool) -> Example:
    """1: same subject, verb and object. 0: half the time a negation, else at most one of them shared."""
    label = rng.randrange(2)
    c = _clause(rng, places)
    negate = label == 0 and rng.random() < 0.5
    if label == 1:
        d = _changed(rng, c, ("adjective",)) if rng.random() < 0.5 else c
    elif negate:
        d = c
    else:
        kept = rng.choice(("subject", "verb", "obj", None))
        d = _changed(rng, c, tuple(s for s in ("subject", "verb", "obj") if s != kept))
    if as_question:
        return (c.question(rng.choice(WH_WORDS)), d.question(rng.choice(WH_WORDS), negated=negate)), label
    return (c.text(), d.text(negated=_negation(rng) if negate else "")), label


def _mrpc(rng: random.Random, places: tuple[str, ...]) -> Example:
    return _paraphrase(rng, places, as_question=False)


def _qqp(rng: random.Random, places: tuple[str, ...]) -> Example:
    return _paraphrase(rng, places, as_question=True)


def _stsb(rng: random.Random, places: tuple[str, ...]) -> Example:
    """5 x the shared fraction of the four content slots, x 0.2 when the second sentence is negated."""
    c = _clause(rng, places)
    slots = ("subject", "verb", "obj", "adjective")
    n_changed = rng.randint(0, len(slots))
    d = _changed(rng, c, tuple(rng.sample(slots, n_changed)))
    negated = _negation(rng) if rng.random() < 0.5 else ""
    score = 5.0 * (len(slots) - n_changed) / len(slots) * (0.2 if negated else 1.0) + rng.uniform(-0.25, 0.25)
    return (c.text(), d.text(negated=negated)), round(min(5.0, max(0.0, score)), 3)


def _entailment(rng: random.Random, places: tuple[str, ...], classes: int) -> Example:
    """Shared by rte (2 classes) and mnli (3: entailment, neutral, contradiction)."""
    c = _clause(rng, places)
    label = rng.randrange(classes)
    # The premise adds a place to the hypothesis template, so the content slots stay aligned.
    if label == 0:
        hypothesis = c.text()
    elif classes == 3 and label == 1:  # neutral: other participants, no negation
        hypothesis = _changed(rng, c, ("subject", "obj")).text()
    elif classes == 3:  # contradiction
        hypothesis = c.text(negated=_negation(rng))
    else:  # rte not_entailment: either kind
        hypothesis = c.text(negated=_negation(rng)) if rng.random() < 0.5 else _changed(rng, c, ("obj",)).text()
    return (c.text(place=True), hypothesis), label


def _rte(rng: random.Random, places: tuple[str, ...]) -> Example:
    return _entailment(rng, places, classes=2)


def _mnli(rng: random.Random, places: tuple[str, ...]) -> Example:
    return _entailment(rng, places, classes=3)


def _qnli(rng: random.Random, places: tuple[str, ...]) -> Example:
    """0: the sentence states the asked fact. 1: half the time it denies it, else it is about another act."""
    label = rng.randrange(2)
    c = _clause(rng, places)
    question = f"what did the {c.subject} {c.verb[0]} ?" if rng.random() < 0.5 else f"who {c.verb[1]} the {c.obj} ?"
    if label == 0:
        sentence = c.text(place=True)
    elif rng.random() < 0.5:
        sentence = c.text(place=True, negated=_negation(rng))
    else:
        sentence = _changed(rng, c, ("subject", "verb")).text(place=True)
    return (question, sentence), label


_MAKERS: dict[str, Callable[[random.Random, tuple[str, ...]], Example]] = {
    "sst2": _sst2, "cola": _cola, "mrpc": _mrpc, "qqp": _qqp, "stsb": _stsb,
    "rte": _rte, "mnli": _mnli, "qnli": _qnli,
}


# --------------------------------------------------------------------------- public API


def synthetic_glue(task: str, sizes: Mapping[str, int] | None = None, seed: int = 0) -> datasets.DatasetDict:
    """A deterministic synthetic stand-in for one GLUE task, in the record format of ``load_glue``.

    ``sizes`` maps split names (``train`` and the task's dev splits) to row counts; splits it
    leaves out get ``DEFAULT_TRAIN_SIZE`` / ``DEFAULT_EVAL_SIZE`` rows.
    """
    spec = get_task(task)
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(spec.splits))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} for synthetic {task}; expected some of {list(spec.splits)}")
    out = {}
    for split in spec.splits:
        n = sizes.get(split, DEFAULT_TRAIN_SIZE if split == "train" else DEFAULT_EVAL_SIZE)
        if n < 0:
            raise ValueError(f"synthetic {task} split {split!r} size must be >= 0, got {n}")
        out[split] = _split(task, split, n, seed)
    return datasets.DatasetDict(out)


def _split(task: str, split: str, n: int, seed: int) -> datasets.Dataset:
    spec = get_task(task)
    rng = random.Random(f"pst-synthetic-glue/{task}/{split}/{seed}")  # str seeds are stable across runs
    places = MISMATCHED_PLACES if split == "validation_mismatched" else PLACES
    columns: dict[str, list] = {key: [] for key in (*spec.text_keys, LABEL_COLUMN)}
    for _ in range(n):
        texts, label = _MAKERS[task](rng, places)
        for key, text in zip(spec.text_keys, texts):
            columns[key].append(text)
        columns[LABEL_COLUMN].append(label)
    return datasets.Dataset.from_dict(columns, features=glue_features(task))


def synthetic_corpus(n_sentences: int, seed: int = 0) -> list[str]:
    """Sentences covering the whole synthetic vocabulary, to train the smoke tokenizers.

    The first lines list every word (so no word is missing from a small tokenizer), the
    rest are sentences from all tasks' generators; the result has
    ``max(n_sentences, number of listing lines)`` lines.
    """
    if n_sentences < 0:
        raise ValueError(f"n_sentences must be >= 0, got {n_sentences}")
    listing = [" ".join(VOCABULARY[i:i + 12]) for i in range(0, len(VOCABULARY), 12)]
    rng = random.Random(f"pst-synthetic-corpus/{seed}")
    tasks = sorted(_MAKERS)
    sentences: list[str] = []
    while len(listing) + len(sentences) < n_sentences:
        task = tasks[len(sentences) % len(tasks)]
        places = rng.choice((PLACES, MISMATCHED_PLACES))
        sentences.extend(_MAKERS[task](rng, places)[0])
    return (listing + sentences)[:max(n_sentences, len(listing))]
