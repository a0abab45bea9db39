"""Every public function on wrapped models (DDP, DataParallel, torch.compile) in one process, and on a
sharded one (FSDP2 over a 1-process gloo group): the same answer as on the bare model, or a loud
refusal naming the fix; never a silent default."""
import socket

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainingArguments

import pst
from pst import PSTConfig, distributed
from pst.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tiny_decoders import causal_lm, perturb, token_batch


@pytest.fixture(scope="module")
def process_group():
    """A 1-process gloo group, as DDP and fully_shard need one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sparse_llama(sparsity=0.5):
    model = pst.sparsify(causal_lm("llama"), PSTConfig(sparsity=sparsity))
    perturb(model)
    pst.set_sparsity(model, 0.3)
    return model


WRAPPERS = {
    "ddp": lambda model: nn.parallel.DistributedDataParallel(model),
    "data_parallel": lambda model: nn.DataParallel(model),
    "compiled": lambda model: torch.compile(model),
}


@pytest.fixture(params=sorted(WRAPPERS))
def wrapped(request, process_group):
    model = sparse_llama()
    return model, WRAPPERS[request.param](model)


def test_unwrap_finds_the_model(wrapped):
    model, wrapper = wrapped
    assert wrapper is not model and distributed.unwrap(wrapper) is model


def test_scheduler_takes_the_schedule_from_the_wrapped_models_config(wrapped):
    model, wrapper = wrapped
    scheduler = pst.SparsityScheduler(wrapper, total_steps=10)
    assert scheduler.final_sparsity == 0.5  # the model's PSTConfig, not the 0.9 default
    scheduler.set_step(10)
    assert {layer.sparsity for _, layer in pst.sparse_layers(model)} == {0.5}


def test_sparsity_report_and_set_sparsity_see_through_wrappers(wrapped):
    model, wrapper = wrapped
    pst.set_sparsity(wrapper, 0.4)
    assert {layer.sparsity for _, layer in pst.sparse_layers(model)} == {0.4}
    assert pst.sparsity_report(wrapper) == pst.sparsity_report(model)
    assert all(row["zeros"] == int(0.4 * row["numel"]) for row in pst.sparsity_report(wrapper))


def test_save_adapter_of_a_wrapper_is_the_bare_models_adapter(wrapped, tmp_path):
    model, wrapper = wrapped
    pst.save_adapter(wrapper, tmp_path / "wrapped")
    pst.save_adapter(model, tmp_path / "bare")
    saved, bare = load_file(tmp_path / "wrapped" / ADAPTER_WEIGHTS), load_file(tmp_path / "bare" / ADAPTER_WEIGHTS)
    assert saved.keys() == bare.keys() and all(torch.equal(saved[k], bare[k]) for k in bare)
    assert (tmp_path / "wrapped" / ADAPTER_CONFIG).read_text() == (tmp_path / "bare" / ADAPTER_CONFIG).read_text()
    assert pst.adapter_state_dict(wrapper).keys() == pst.adapter_state_dict(model).keys()


def test_load_adapter_refuses_a_wrapped_base_model(wrapped, tmp_path):
    model, _ = wrapped
    pst.save_adapter(model, tmp_path)
    base = causal_lm("llama")
    with pytest.raises(ValueError, match="load the adapter into the bare base model first"):
        pst.load_adapter(nn.DataParallel(base), tmp_path)
    assert not any(True for _ in pst.sparse_layers(base))  # refused before touching it


def test_merge_of_a_wrapper_returns_the_merged_bare_model(wrapped, token_batch_llama):
    model, wrapper = wrapped
    with torch.no_grad():
        expected = model(**token_batch_llama).logits
    merged = pst.merge(wrapper)
    assert merged is model and not hasattr(merged, "pst_config")
    assert not any(True for _ in pst.sparse_layers(model))
    with torch.no_grad():
        assert torch.allclose(merged(**token_batch_llama).logits, expected, atol=1e-5)


def test_trainable_parameters_of_a_wrapper_count_the_head(process_group):
    from tiny_decoders import sequence_classifier

    model = pst.sparsify(sequence_classifier("llama"), PSTConfig())
    counts = pst.trainable_parameters(model)
    assert counts.head > 0
    assert pst.trainable_parameters(nn.parallel.DistributedDataParallel(model)) == counts


@pytest.fixture
def token_batch_llama():
    return token_batch()


# -- loud refusals instead of defaults ---------------------------------------------------------------


def test_scheduler_refuses_a_model_without_sparse_layers():
    with pytest.raises(ValueError, match="no sparse layer"):
        pst.SparsityScheduler(causal_lm("llama"), total_steps=10)


def test_scheduler_needs_the_target_when_the_model_carries_no_config():
    layer = pst.SparseLayer(nn.Linear(8, 8), PSTConfig())
    with pytest.raises(ValueError, match="final_sparsity="):
        pst.SparsityScheduler(layer, total_steps=10)
    assert pst.SparsityScheduler(layer, total_steps=10, final_sparsity=0.5).get_sparsity(10) == 0.5


# -- a sharded model (FSDP2, one process) --------------------------------------------------------------


@pytest.fixture
def sharded(process_group):
    from torch.distributed.fsdp import fully_shard

    model = sparse_llama()
    reference = pst.sparsity_report(model)
    expected = {name: t.clone() for name, t in pst.adapter_state_dict(model).items()}
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model, reference, expected


def test_a_sharded_model_is_recognised(sharded):
    model, _, _ = sharded
    assert distributed.sharding(model) == "fsdp2"
    with distributed.gathered(model) as whole:
        assert distributed.sharding(whole) is None
        layers = [layer for _, layer in pst.sparse_layers(whole)]
        assert all(layer.weight.shape == (layer.out_features, layer.in_features) for layer in layers)
    assert distributed.sharding(model) == "fsdp2"  # resharded after the block


def test_report_and_adapter_of_a_sharded_model_are_gathered(sharded, tmp_path):
    model, reference, expected = sharded
    assert pst.sparsity_report(model) == reference
    state = pst.adapter_state_dict(model)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    pst.save_adapter(model, tmp_path)
    saved = load_file(tmp_path / ADAPTER_WEIGHTS)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_merge_refuses_a_sharded_model_and_says_how(sharded):
    model, _, _ = sharded
    with pytest.raises(ValueError, match="full_state_dict=True"):
        pst.merge(model)


# -- the Trainer's log pairs a loss with the sparsity it was computed at --------------------------------------


def test_logged_loss_carries_the_sparsity_its_forward_ran_at(tiny_model, token_dataset, tmp_path):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.6))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1,
                             report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True,
                             eval_strategy="steps", eval_steps=4)
    trainer = Trainer(model=model, args=args, train_dataset=token_dataset, eval_dataset=token_dataset,
                      callbacks=[pst.SparsityCallback()])
    trainer.train()
    losses = [e for e in trainer.state.log_history if "loss" in e]
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(losses) == 8 and len(evaluations) == 2
    for entry in losses:  # step t's forward ran at the sparsity the schedule set after step t - 1
        assert entry["sparsity"] == pst.cubic_sparsity(entry["step"] - 1, 8, final_sparsity=0.6), entry
    for entry in evaluations:  # evaluated after step t: at the sparsity of step t
        assert entry["sparsity"] == pst.cubic_sparsity(entry["step"], 8, final_sparsity=0.6), entry


@pytest.mark.parametrize("method", ["effective_weight", "mask", "score"])
def test_inspecting_a_sharded_layer_refuses_and_names_the_fix(sharded, method):
    model, _, _ = sharded
    layer = model.model.layers[0].self_attn.q_proj
    with pytest.raises(ValueError, match="gathered"):
        getattr(layer, method)()
    with distributed.gathered(model):
        assert getattr(layer, method)().shape == (layer.out_features, layer.in_features)


# -- the sparsity travels with the weights -----------------------------------------------------------------


def test_a_state_dict_reloaded_without_the_schedule_keeps_the_sparsity(token_batch_llama):
    trained = sparse_llama()
    pst.set_sparsity(trained, 0.7)
    fresh = pst.sparsify(causal_lm("llama"), PSTConfig(sparsity=0.5))  # sparsity 0 until a schedule moves it
    fresh.load_state_dict(trained.state_dict())
    assert {layer.sparsity for _, layer in pst.sparse_layers(fresh)} == {0.7}
    with torch.no_grad():
        assert torch.equal(fresh(**token_batch_llama).logits, trained(**token_batch_llama).logits)


def test_a_trainer_checkpoint_reloaded_without_the_schedule_keeps_the_sparsity(token_dataset, tiny_model, tmp_path):
    from safetensors.torch import load_file as load_weights

    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.6))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, report_to=[],
                             save_strategy="steps", save_steps=4, use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=token_dataset, callbacks=[pst.SparsityCallback()]).train()
    weights = load_weights(tmp_path / "checkpoint-4" / "model.safetensors")
    assert any(name.endswith("_extra_state") for name in weights)
    fresh = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.6))
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    assert not unexpected and not [name for name in missing if "extra_state" in name], missing
    assert {layer.sparsity for _, layer in pst.sparse_layers(fresh)} == {0.6}
    assert pst.sparsity_report(fresh) == pst.sparsity_report(model)
