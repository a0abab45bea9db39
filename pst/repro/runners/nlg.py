"""One NLG run: GPT-2 on E2E, DART or WebNLG; train, merge, beam-search decode, score, record.

Settings follow the paper's recipe (which follows LoRA's): AdamW, linear LR schedule with
500 warm-up steps, label smoothing 0.1, sequence length 512; beam 10, length penalty 0.8,
no-repeat n-gram size 4, at most 64 new tokens.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments, set_seed

import pst

from ..configs import NlgRunConfig
from ..data.nlg import LMDataCollator, build_lm_features, build_prompts, decode_completion, group_references, load_nlg
from ..metrics.nlg import e2e_scores, webnlg_scores
from ..models import load_model, load_tokenizer
from ..results import write_jsonl
from ..runstate import run_paths
from .lifecycle import (batch_record, check_world_size, finish_run, model_summary, resume_point, reusable_record,
                        training_arguments, training_log, without_printed_logs)
from .model_source import resolve_model

logger = logging.getLogger(__name__)

#: Decoded outputs, one JSON object a line, next to the run's record.
PREDICTIONS_SUFFIX = ".predictions.jsonl"


def run_nlg(config: NlgRunConfig, results_dir: Path, work_dir: Path, force: bool | float = False,
            stale_records: str = "refuse") -> dict:
    """Run (or skip, or resume) one NLG run and return its record; decoded outputs go beside it.

    ``force`` and ``stale_records`` as in :func:`pst.repro.runners.glue.run_glue`.
    """
    paths = run_paths(config, results_dir, work_dir)
    if (record := reusable_record(paths, force, stale_records)) is not None:
        return record
    started = time.time()
    pst_config = config.pst_config()
    check_world_size(config)
    set_seed(config.seed)

    model_path = resolve_model(config.model, Path(work_dir) / "models")
    tokenizer = load_tokenizer(model_path)
    data = load_nlg(config.task, config.data_source, data_dir=config.data_dir, url=config.data_url,
                    seed=config.seed, synthetic_sizes=config.synthetic_sizes)
    model = load_model(model_path, "causal-lm")
    pst.sparsify(model, pst_config)

    trainer = without_printed_logs(Trainer(
        model=model,
        args=_training_arguments(config, paths.checkpoints),
        train_dataset=build_lm_features(data["train"], tokenizer, max_length=config.max_length),
        data_collator=LMDataCollator(tokenizer),
        callbacks=[pst.SparsityCallback()],
    ))
    trainer.train(resume_from_checkpoint=resume_point(paths))
    if not trainer.is_world_process_zero():
        return {}
    summary = model_summary(model, config)
    model = pst.merge(model).eval()  # decode with plain dense kernels: the mask is fixed from here on

    subsets = ("all", "seen", "unseen") if config.task == "webnlg" else ("all",)
    metrics, outputs = {}, {}
    for subset in subsets:
        contexts, references = group_references(data[config.eval_split], subset)
        if config.max_eval_inputs is not None:
            contexts, references = contexts[: config.max_eval_inputs], references[: config.max_eval_inputs]
        if not contexts:
            logger.warning("%s/%s has no %s inputs to decode", config.task, config.eval_split, subset)
            continue
        predictions = decode(model, tokenizer, contexts, config)
        score = e2e_scores if config.task == "e2e" else webnlg_scores
        metrics[subset] = score(predictions, references)
        outputs[subset] = [{"subset": subset, "context": c, "prediction": p, "references": r}
                           for c, p, r in zip(contexts, predictions, references)]
    predictions_file = paths.side_file(PREDICTIONS_SUFFIX)
    write_jsonl(predictions_file, [row for rows in outputs.values() for row in rows])
    body = {
        **summary,
        "metrics": metrics,
        "predictions_file": predictions_file.name,
        "train_steps": trainer.state.global_step,
        **batch_record(trainer),
        "training_log": training_log(trainer.state.log_history, pst.get_method(config.method).prunes),
        "train_loss": next((e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e), None),
    }
    return finish_run(paths, config, body, started)


def _training_arguments(config: NlgRunConfig, output_dir: Path) -> TrainingArguments:
    return training_arguments(config, output_dir, label_smoothing_factor=config.label_smoothing, eval_strategy="no")


@torch.no_grad()
def decode(model, tokenizer, contexts: list[str], config: NlgRunConfig) -> list[str]:
    """Batched beam search from the same prefix the model saw in training (context + eos)."""
    prompts = build_prompts(contexts, tokenizer, max_prompt_length=config.max_length - config.max_new_tokens)
    collate = LMDataCollator(tokenizer, padding_side="left")
    device = next(model.parameters()).device
    predictions = []
    for start in tqdm(range(0, len(prompts), config.decode_batch_size), desc=f"decoding {config.task}", unit="batch"):
        batch = {k: v.to(device) for k, v in collate(prompts[start : start + config.decode_batch_size]).items()}
        generated = model.generate(
            **batch,
            num_beams=config.num_beams,
            length_penalty=config.length_penalty,
            no_repeat_ngram_size=config.no_repeat_ngram_size,
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            early_stopping=True,
            pad_token_id=collate.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        predictions += [decode_completion(row.tolist(), tokenizer) for row in new_tokens]
    return predictions
