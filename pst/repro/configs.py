"""The configs of one GLUE run and one NLG run: the identity of a run, light to import.

Profiles build them, runners execute them, the report and ``reproduce.py`` read them; none
of those needs the others to know what a run is. A config holds what determines the run's
result and nothing else: not the experiment that asked for it (several experiments share
a run, see :mod:`pst.repro.experiments`), not which side files to keep.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pst

from .glue_tasks import get_task
from .results import run_id

#: Training precisions a run may ask for: fp32, or bf16 mixed precision (autocast; fp32 weights
#: and optimizer state), which the paper profile uses on GPUs that support it.
PRECISIONS = ("fp32", "bf16")

#: ``PSTConfig`` defaults that a run's ``pst`` overrides may change (method and sparsity
#: are fields of the run itself).
_PST_DEFAULTS = {f.name: f.default for f in dataclasses.fields(pst.PSTConfig) if f.name not in ("method", "sparsity")}


class _RunConfig:
    """What both run configs share: the PST settings of the run, and its id."""

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        # Overrides equal to a default are dropped, so {"weight_rank": 8} and {} are one run.
        unknown = sorted(set(self.pst) - set(_PST_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown pst override(s) {unknown}; accepted: {sorted(_PST_DEFAULTS)} "
                             "(method and sparsity are fields of the run config)")
        object.__setattr__(self, "pst", {k: v for k, v in sorted(self.pst.items()) if v != _PST_DEFAULTS[k]})
        pst.get_method(self.method)  # fail at planning time, naming the known methods
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.world_size, int) or isinstance(self.world_size, bool) or self.world_size < 1:
            raise ValueError(f"world_size must be an int >= 1 (the number of training processes), "
                             f"got {self.world_size!r}")

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step: ``batch_size`` is per process (as the Trainer's is)."""
        return self.batch_size * self.world_size

    def pst_config(self) -> pst.PSTConfig:
        """The run's ``PSTConfig``: its method and sparsity plus the ``pst`` overrides."""
        return pst.PSTConfig(method=self.method, sparsity=self.sparsity, **self.pst)

    @property
    def run_id(self) -> str:
        """The record's name: equal configs, whichever experiment asks, have one id and one record.

        A run on several processes trains with a larger global batch: its id says so
        (``...-ws2-gb64-<hash>``); one-process runs keep the ids they always had.
        """
        fields = dataclasses.asdict(self)
        if fields["world_size"] == 1:
            del fields["world_size"]
        return run_id(fields)


@dataclass(frozen=True)
class GlueRunConfig(_RunConfig):
    """Everything that defines one GLUE run; its JSON is the run's identity."""

    kind: ClassVar[str] = "glue"

    task: str
    model: str  # hub name, local folder, or tiny:bert / tiny:roberta
    method: str
    learning_rate: float
    epochs: int
    batch_size: int
    sparsity: float = 0.9
    seed: int = 0
    data_source: str = "hub"  # hub | local | synthetic
    data_dir: str | None = None
    synthetic_sizes: dict[str, int] | None = None
    max_length: int = 128
    eval_batch_size: int = 128
    weight_decay: float = 0.0
    warmup_steps: float = 0  # an int counts steps, a float in [0, 1) is a fraction of training
    precision: str = "fp32"  # fp32 | bf16 (mixed); the record says which one ran
    pst: dict = field(default_factory=dict)  # PSTConfig overrides: ranks, ablation switches, ...
    world_size: int = 1  # training processes (torchrun / accelerate launch); batch_size is per process

    def __post_init__(self) -> None:
        super().__post_init__()
        get_task(self.task)


@dataclass(frozen=True)
class NlgRunConfig(_RunConfig):
    """Everything that defines one NLG run; its JSON is the run's identity."""

    kind: ClassVar[str] = "nlg"

    task: str  # e2e | dart | webnlg
    model: str  # hub name (gpt2-medium), local folder, or tiny:gpt2
    method: str
    learning_rate: float = 1e-4
    epochs: int = 5
    batch_size: int = 8
    sparsity: float = 0.9
    seed: int = 0
    data_source: str = "hub"  # hub | local | synthetic
    data_dir: str | None = None
    data_url: str | None = None
    synthetic_sizes: dict[str, int] | None = None
    max_length: int = 512
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    eval_split: str = "test"
    max_eval_inputs: int | None = None  # decode only the first N inputs (smoke runs)
    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    decode_batch_size: int = 16
    precision: str = "fp32"  # fp32 | bf16 (mixed); the record says which one ran
    pst: dict = field(default_factory=dict)
    world_size: int = 1  # training processes (torchrun / accelerate launch); batch_size is per process


#: Config class by kind, for files that name the kind (membership files, the runner CLI).
CONFIG_KINDS: dict[str, type] = {cls.kind: cls for cls in (GlueRunConfig, NlgRunConfig)}
