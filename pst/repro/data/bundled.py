"""The real subsets shipped inside the package (``files/``, see :mod:`pst.repro.data.shipped`),
and the pre-training corpus the tiny stand-in models learn from them.
"""
from __future__ import annotations

from .glue import get_task, load_glue
from .nlg import load_nlg
from .shipped import FILES_DIR, GLUE_TASKS, NLG_DATASETS, NOT_SHIPPED, glue_dir, nlg_dir  # noqa: F401 - re-exported


def pretraining_corpus() -> list[str]:
    """Real text to train the tiny models' tokenizers and pre-train them: every *training*
    text of the shipped subsets (never a dev or test text, so no evaluation text is seen).

    Cached per process: every tiny-model lookup asks for it to check its build marker.
    """
    global _CORPUS
    if _CORPUS is None:
        texts: dict[str, None] = {}
        for task in GLUE_TASKS:
            train = load_glue(task, "bundled", splits=("train",))["train"]
            for key in get_task(task).text_keys:
                texts.update(dict.fromkeys(train[key]))
        for name in NLG_DATASETS:
            train = load_nlg(name, "bundled", splits=("train",))["train"]
            texts.update(dict.fromkeys(train["context"]))
            texts.update(dict.fromkeys(train["target"]))
        _CORPUS = [text for text in texts if text.strip()]
    return list(_CORPUS)


_CORPUS: list[str] | None = None
