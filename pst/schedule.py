"""The cubic sparsity schedule (Zhu & Gupta 2018) with a dense warm-up and a constant cool-down."""
from __future__ import annotations

import logging

from torch import nn
from transformers import TrainerCallback

from .device_schedule import DevicePrunes
from .distributed import unwrap
from .surgery import CONFIG_ATTRIBUTE, invalidate_masks, refresh_masks, set_sparsity, sparse_layers

logger = logging.getLogger(__name__)


def cubic_sparsity(
    step: int,
    total_steps: int,
    warmup_fraction: float = 0.1,
    cooldown_fraction: float = 0.3,
    initial_sparsity: float = 0.0,
    final_sparsity: float = 0.9,
) -> float:
    """Sparsity after ``step`` of ``total_steps`` optimizer steps.

    p = p_0 for t <= w_i T; p = p_T for t > T - w_f T; in between
    p = p_T + (p_0 - p_T) (1 - (t - w_i T) / (T - (w_i + w_f) T))^3.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    for name, value in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not (0.0 <= warmup_fraction and 0.0 <= cooldown_fraction and warmup_fraction + cooldown_fraction <= 1.0):
        raise ValueError(f"warm-up fractions must be >= 0 and sum to <= 1, got {warmup_fraction}, {cooldown_fraction}")
    warmup_steps = warmup_fraction * total_steps
    cooldown_start = total_steps - cooldown_fraction * total_steps
    if step <= warmup_steps:
        return initial_sparsity
    if step > cooldown_start:
        return final_sparsity
    progress = (step - warmup_steps) / (cooldown_start - warmup_steps)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


class SparsityScheduler:
    """Moves every sparse layer of a model along the cubic schedule, like a torch LR scheduler.

    Call ``step()`` after each optimizer step; ``last_step`` counts the steps taken. The
    state dict lets a resumed run continue where it stopped. With an N:M pattern the
    schedule ramps the same way to at most 1 - N/M: each layer prunes exactly floor(p n k)
    of its N:M candidates at every step (``PSTConfig.pattern``). A new sparsity reaches the
    masks at the next forward pass.

    The schedule comes from the model's ``PSTConfig`` (``pst.sparsify`` keeps it), found inside
    DDP/FSDP wrappers; an argument given here overrides it. A model without one (a bare
    ``SparseLayer``) must be given ``final_sparsity``: a silent default of 0.9 would hide a
    config that was lost.

    ``capturable=True`` is for steps captured in CUDA graphs (``torch.cuda.graph`` around
    forward, backward, a capturable optimizer and ``scheduler.step()``): the step counter and
    the pruned counts move on the device (``pst.device_schedule``), and each ``step()``
    rebuilds every mask with the same kernels and arguments, ramp or not. The host-side
    ``last_step`` and the layers' ``sparsity`` move only when ``step()`` runs in Python, not
    when a graph replays it. Not with ``keep_zeros`` nor with FSDP-sharded layers.
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        warmup_fraction: float | None = None,
        cooldown_fraction: float | None = None,
        initial_sparsity: float | None = None,
        final_sparsity: float | None = None,
        last_step: int = 0,
        capturable: bool = False,
    ) -> None:
        model = unwrap(model)
        config = getattr(model, CONFIG_ATTRIBUTE, None)
        # A sparsified model of a method that wraps nothing (dense fine-tuning) has a config and no
        # layer: its schedule moves nothing. A model with neither was never sparsified.
        if config is None and not any(True for _ in sparse_layers(model)):
            raise ValueError(
                f"this {type(model).__name__} has no sparse layer to schedule: call pst.sparsify(model, config) first"
            )
        if config is None and final_sparsity is None:
            raise ValueError(
                f"this {type(model).__name__} carries no PSTConfig (pst.sparsify keeps it as model.pst_config), "
                "so the target is unknown: pass final_sparsity= (and the warm-up fractions if not the defaults)"
            )

        def pick(value, field, default):
            return value if value is not None else getattr(config, field, default)

        self.model = model
        self.total_steps = total_steps
        self.warmup_fraction = pick(warmup_fraction, "warmup_fraction", 0.1)
        self.cooldown_fraction = pick(cooldown_fraction, "cooldown_fraction", 0.3)
        self.initial_sparsity = pick(initial_sparsity, "initial_sparsity", 0.0)
        self.final_sparsity = pick(final_sparsity, "sparsity", 0.9)
        self.last_step = last_step
        self.get_sparsity()  # validate the arguments now, not at the first step
        self.device_prunes = self._on_device() if capturable else None
        self._apply()

    def _on_device(self) -> DevicePrunes:
        layers = [layer for _, layer in sparse_layers(self.model) if layer.spec.prunes]
        for layer in layers:
            if layer.keep_zeros:
                raise ValueError("capturable=True does not support keep_zeros: its pruned counts depend on the "
                                 "base's zeros, counted on the host")
            if layer.mask_storage == "threshold":
                raise ValueError("capturable=True needs mask_storage='bits': a threshold is selected with the "
                                 "pruned count on the host")
            if not layer._weights_present():
                raise ValueError("capturable=True needs every sparse layer's weights whole on this rank; "
                                 "FSDP shards them, and its layers rebuild their masks in their units' forward")
        numels = [layer.layout.block_rows(block) * layer.in_features for layer in layers for block in range(layer.blocks)]
        prunes = DevicePrunes(self.get_sparsity, self.total_steps, numels, [layer.weight.device for layer in layers],
                              self.last_step)
        for layer in layers:
            layer.device_prunes = prunes
        return prunes

    def get_sparsity(self, step: int | None = None) -> float:
        return cubic_sparsity(
            self.last_step if step is None else step,
            self.total_steps,
            self.warmup_fraction,
            self.cooldown_fraction,
            self.initial_sparsity,
            self.final_sparsity,
        )

    def step(self) -> float:
        self.last_step += 1
        if self.device_prunes is not None:
            self.device_prunes.advance()
        return self._apply()

    def set_step(self, step: int) -> float:
        self.last_step = step
        if self.device_prunes is not None:
            self.device_prunes.set_step(step)
        return self._apply()

    def _apply(self) -> float:
        sparsity = self.get_sparsity()
        set_sparsity(self.model, sparsity)
        if self.device_prunes is not None:  # the same rebuild at every step, whatever the host knows
            invalidate_masks(self.model)
        refresh_masks(self.model)  # here, outside any compiled step (see pst.refresh_masks)
        return sparsity

    def state_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in ("model", "device_prunes")}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.device_prunes is not None:  # the table follows the loaded schedule
            self.device_prunes = self._on_device()
        self._apply()


class SparsityCallback(TrainerCallback):
    """Drives the schedule from ``transformers.Trainer``: one schedule step per optimizer step.

    The total comes from the Trainer (``state.max_steps``) at the start of training, and the
    position from ``state.global_step``, so a run resumed from a checkpoint continues the
    schedule where it stopped. Works the same under DDP and FSDP (each rank moves its own layers
    to the same sparsity).

    Logs carry ``sparsity``: a training loss is paired with the sparsity its step's forward
    passes ran at (the schedule moves at the end of the step, before the Trainer logs), any
    other entry (evaluations) with the sparsity the model has when it is logged.
    """

    def __init__(self, model: nn.Module | None = None, **schedule_overrides) -> None:
        self.model = model
        self.schedule_overrides = schedule_overrides
        self.scheduler: SparsityScheduler | None = None
        self._step_sparsity: float | None = None  # what this step's forward passes ran at

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        target = self.model if self.model is not None else model
        if target is None:
            raise ValueError("SparsityCallback needs the model: pass it to the callback or the Trainer")
        self.scheduler = SparsityScheduler(target, state.max_steps, last_step=state.global_step, **self.schedule_overrides)
        logger.info("sparsity schedule over %d steps, starting at step %d", state.max_steps, state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.scheduler is not None:
            self._step_sparsity = self.scheduler.get_sparsity()

    def on_step_end(self, args, state, control, **kwargs):
        if self.scheduler is not None:
            self.scheduler.set_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.scheduler is None or logs is None:
            return
        training_loss = "loss" in logs and self._step_sparsity is not None
        logs["sparsity"] = self._step_sparsity if training_loss else self.scheduler.get_sparsity()
        # The Trainer appends a copy of `logs` to the history before calling back; both
        # should carry the sparsity, so loss curves can be read against it later.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["sparsity"] = logs["sparsity"]
