"""The GLUE runner under torchrun (2 gloo processes on CPU): the loss and the gradients of one
process training the same global batch, the world size and global batch in the record and the
run id, the tiny model built once."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from pst.repro.configs import GlueRunConfig
from pst.repro.results import read_record
from pst.repro.runners.glue import run_glue
from pst.repro.runners.model_source import resolve_model
from pst.repro.runstate import run_paths

sys.path.insert(0, str(Path(__file__).parent / "distributed"))
from launcher import torchrun  # noqa: E402

pytestmark = pytest.mark.slow
GLOBAL_BATCH = 16


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory):
    """The tiny BERT without dropout: per-process dropout draws differ from one process's, by design."""
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert-no-dropout"
    shutil.copytree(resolve_model("tiny:bert", tmp_path_factory.mktemp("models")), folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def config(model, world_size):
    return GlueRunConfig(task="sst2", model=model, method="pst", learning_rate=1e-3, epochs=1,
                         batch_size=GLOBAL_BATCH // world_size, data_source="synthetic", world_size=world_size,
                         synthetic_sizes={"train": 6 * GLOBAL_BATCH, "validation": 32}, eval_batch_size=32)


@pytest.fixture(scope="module")
def runs(no_dropout_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one = run_glue(config(no_dropout_bert, 1), root / "results", root / "work")
    two = config(no_dropout_bert, 2)
    values = {k: v for k, v in json.loads(json.dumps(two.__dict__)).items() if k != "world_size"}  # from the launcher
    (root / "run.json").write_text(json.dumps(values))
    torchrun(["-m", "pst.repro.runners", "glue", str(root / "run.json"), "--out", str(root)], cwd=root)
    return one, read_record(run_paths(two, root / "results", root / "work").record)


def test_two_processes_log_the_loss_of_one_process_with_the_same_global_batch(runs):
    one, two = runs
    losses_one = [entry["loss"] for entry in one["training_log"]]
    losses_two = [entry["loss"] for entry in two["training_log"]]
    assert len(losses_two) == len(losses_one) == 6
    assert losses_two[0] == pytest.approx(losses_one[0], rel=1e-5)  # the first step: the same batch, the same loss
    # Later steps follow the gradients: scaled by the number of processes, they would drift at once.
    assert losses_two == pytest.approx(losses_one, rel=1e-3)


def test_the_record_and_the_run_id_say_how_many_processes_trained(runs):
    one, two = runs
    assert (one["world_size"], one["global_batch_size"]) == (1, GLOBAL_BATCH)
    assert (two["world_size"], two["global_batch_size"]) == (2, GLOBAL_BATCH)
    assert "-ws2-gb16-" in two["run_id"] and "ws" not in one["run_id"]
    assert two["config"]["world_size"] == 2 and two["config"]["batch_size"] == GLOBAL_BATCH // 2


def test_a_config_for_another_number_of_processes_is_refused(no_dropout_bert, tmp_path):
    with pytest.raises(ValueError, match="world_size=2 but 1 process"):
        run_glue(config(no_dropout_bert, 2), tmp_path / "results", tmp_path / "work")


def test_one_process_ids_are_unchanged_by_the_world_size_field():
    from pst.repro.results import run_id
    import dataclasses

    single = config("tiny:bert", 1)
    fields = {k: v for k, v in dataclasses.asdict(single).items() if k != "world_size"}
    assert single.run_id == run_id(fields)
