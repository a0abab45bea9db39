"""Cubic schedule: endpoints, monotonicity, plateaus; the scheduler and the Trainer callback."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Trainer, TrainingArguments

import pst
from pst import PSTConfig, SparsityScheduler, cubic_sparsity


def test_paper_formula_at_known_points():
    # T = 100, w_i = 0.1, w_f = 0.3: dense until step 10, final from step 71, cubic between.
    assert cubic_sparsity(0, 100) == 0.0
    assert cubic_sparsity(10, 100) == 0.0
    assert cubic_sparsity(40, 100) == pytest.approx(0.9 + (0 - 0.9) * (1 - 30 / 60) ** 3)
    assert cubic_sparsity(70, 100) == pytest.approx(0.9)
    assert cubic_sparsity(71, 100) == 0.9
    assert cubic_sparsity(100, 100) == 0.9


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 5000),
    w_i=st.floats(0, 0.5),
    w_f=st.floats(0, 0.5),
    p0=st.floats(0, 0.5),
    p_t=st.floats(0.5, 0.99),
)
def test_schedule_properties(total, w_i, w_f, p0, p_t):
    values = [cubic_sparsity(t, total, w_i, w_f, p0, p_t) for t in range(total + 1)]
    assert values[0] == p0  # the schedule starts at p_0 (step 0 is inside the warm-up, even when w_i = 0)
    assert values[-1] == p_t  # and ends exactly at p_T (the last step closes the cubic, even when w_f = 0)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))  # monotone
    assert all(min(p0, p_t) - 1e-12 <= v <= max(p0, p_t) + 1e-12 for v in values)
    assert all(v == p0 for t, v in enumerate(values) if t <= w_i * total)
    assert all(v == p_t for t, v in enumerate(values) if t > total - w_f * total)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(total_steps=0), "total_steps"), (dict(step=-1), "step"), (dict(final_sparsity=1.0), "final_sparsity"),
     (dict(warmup_fraction=0.8, cooldown_fraction=0.3), "warm-up")],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    arguments = dict(step=1, total_steps=10) | kwargs
    with pytest.raises(ValueError, match=message):
        cubic_sparsity(**arguments)


def test_scheduler_steps_layers_and_resumes(tiny_model):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.8))
    scheduler = SparsityScheduler(model, total_steps=20)
    seen = [scheduler.step() for _ in range(20)]
    assert seen == [cubic_sparsity(t, 20, final_sparsity=0.8) for t in range(1, 21)]
    assert all(layer.sparsity == 0.8 for _, layer in pst.sparse_layers(model))
    resumed = SparsityScheduler(model, total_steps=20)
    resumed.load_state_dict({**scheduler.state_dict(), "last_step": 9})
    assert next(pst.sparse_layers(model))[1].sparsity == cubic_sparsity(9, 20, final_sparsity=0.8)


def test_trainer_callback_moves_sparsity_along_the_schedule(tiny_model, token_dataset, tmp_path):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.6))
    seen = []

    class Recorder(pst.SparsityCallback):
        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            seen.append((state.global_step, next(pst.sparse_layers(model))[1].sparsity))

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2, report_to=[],
        save_strategy="no", logging_steps=4, use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=token_dataset, callbacks=[Recorder()])
    trainer.train()
    assert [step for step, _ in seen] == list(range(1, 17))
    assert [p for _, p in seen] == [cubic_sparsity(t, 16, final_sparsity=0.6) for t in range(1, 17)]
    assert seen[-1][1] == 0.6
    measured = pst.sparsity_report(model)
    assert all(row["sparsity"] == pytest.approx(0.6, abs=1e-3) for row in measured)
    assert any("sparsity" in entry for entry in trainer.state.log_history)


def test_a_dense_fine_tuning_model_takes_a_schedule_that_moves_nothing(tiny_model):
    import pst

    model = pst.sparsify(tiny_model("bert"), pst.PSTConfig(method="dense"))
    scheduler = pst.SparsityScheduler(model, total_steps=10)
    assert scheduler.step() == pytest.approx(pst.cubic_sparsity(1, 10))
    assert not list(pst.sparse_layers(model))
    with pytest.raises(ValueError, match="no sparse layer"):
        pst.SparsityScheduler(tiny_model("bert"), total_steps=10)
