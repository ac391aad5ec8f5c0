"""QLoRA end to end on a tiny model: training on an nf4 base lowers the loss and resumes exactly after SIGKILL;
its exports load in peft and transformers; evaluation, generation, the experiment runner and the bench run on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import REPO, write_sft_jsonl
from test_train import kill_once_step_6_is_committed, losses, run, run_in_process, train_args

import capt_jax
from capt_jax import checkpoint as ckpt
from capt_jax.config import load_config
from capt_jax.export import export
from capt_jax.lora import lora_scale
from capt_jax.model import Lora, forward
from capt_jax.model.decoder import PROJECTIONS

QLORA = ["--config.model.quantize=nf4", "--config.model.double_quant=true"]
STEPS = ["--config.train.max_steps=30", "--config.checkpoint.every_steps=3"]
RANK, ALPHA = 16, 32.0  # configs/smollm2_sft.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_sft_jsonl(tmp_path_factory.mktemp("qlora_data") / "sft.jsonl", 160)


@pytest.fixture(scope="module")
def reference(tiny_chat_dir, data, tmp_path_factory) -> Path:
    """An uninterrupted run of 30 steps on an nf4 base with double quantisation, checkpointed every 3."""
    workdir = tmp_path_factory.mktemp("qlora") / "ref"
    run_in_process(train_args(tiny_chat_dir, data, workdir, *STEPS, *QLORA))
    return workdir


@pytest.fixture(scope="module")
def trained(reference, tiny_chat_dir):
    """(nf4 model, adapters, token ids) of the reference run's last checkpoint."""
    adapters, meta = ckpt.restore_adapters(str(reference))
    assert meta["base_quantization"] == {"quantize": "nf4", "double_quant": True}
    model = capt_jax.load_pretrained(tiny_chat_dir, quantize="nf4", double_quant=True, progress=False)
    ids = np.random.default_rng(0).integers(0, 49152, (2, 12)).astype(np.int32)
    return model, adapters, ids


def adapted_logits(model, adapters, ids) -> np.ndarray:
    lora = Lora(adapters, lora_scale(RANK, ALPHA))
    return np.asarray(forward(model.params, jnp.asarray(ids), model.config, lora=lora)[0])


def relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max())


def test_training_on_an_nf4_base_lowers_the_loss(reference):
    curve = losses(reference)
    assert sorted(curve) == list(range(1, 31))
    # measured: 10.71 over steps 1-5, 8.27 over steps 26-30 (the random tiny model starts near ln(49152) = 10.8)
    assert np.mean([curve[s] for s in range(26, 31)]) < 0.85 * np.mean([curve[s] for s in range(1, 6)]), curve


def test_sigkill_on_an_nf4_base_then_restart_reproduces_every_loss(reference, tiny_chat_dir, data, tmp_path):
    """tests/test_train.py's kill test, on the quantized base: killed once step 6 is committed and step 7 ran."""
    workdir = tmp_path / "killed"
    kill_once_step_6_is_committed(train_args(tiny_chat_dir, data, workdir, *STEPS, *QLORA), workdir)
    assert not (workdir / "checkpoints" / "30").is_dir()
    resumed = run(train_args(tiny_chat_dir, data, workdir, *STEPS, *QLORA))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert losses(workdir) == losses(reference)  # every step, bit for bit


def test_resuming_on_another_base_quantization_is_refused(reference, tiny_chat_dir, data, tmp_path, capsys):
    from capt_jax.train import main

    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in train_args(tiny_chat_dir, data, workdir, *STEPS)[3:]])  # full-precision base
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "config keys 'model.quantize' and 'model.double_quant'" in err and "'nf4'" in err


def test_peft_export_loads_onto_the_original_base(reference, trained, tiny_chat_dir, tmp_path):
    """The adapter is peft's, on the base folder as it is: in float32 its logits are capt_jax's float32 base with
    the adapter; loaded by bitsandbytes in nf4 (the trained setting) they are our nf4 run's up to bitsandbytes'
    CPU matmul (measured 0.015 apart, where nf4 and float32 bases are 0.377 apart)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, adapters, ids = trained
    out = export(reference, tmp_path / "peft", "peft", progress=False)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_chat_dir.resolve()
    )
    full = capt_jax.load_pretrained(tiny_chat_dir, progress=False)
    want = adapted_logits(full, adapters, ids)
    assert relative_error(want, full.logits(ids)) > 1e-2  # the adapter really changes the model
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, out).eval()(input_ids=torch.from_numpy(ids).long()).logits
    assert relative_error(got.numpy(), want) <= 1e-4
    pytest.importorskip("bitsandbytes")
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, quantization_config=nf4, device_map="cpu")
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, out).eval()(input_ids=torch.from_numpy(ids).long()).logits
    assert relative_error(got.numpy(), adapted_logits(model, adapters, ids)) <= 0.05


def test_merged_export_is_the_dequantized_base_in_bfloat16(reference, trained, tmp_path):
    """In float32 the merged folder is exactly the model trained (nf4 base dequantized, plus B @ A); by default it
    is written in bfloat16, whose rounding moves this tiny model's logits by 0.012 (measured)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model, adapters, ids = trained
    want = adapted_logits(model, adapters, ids)
    for dtype, bound in (("float32", 1e-4), ("auto", 3e-2)):
        out = export(reference, tmp_path / dtype, "merged", dtype=dtype, progress=False)
        assert AutoConfig.from_pretrained(out).dtype == (torch.float32 if dtype == "float32" else torch.bfloat16)
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            got = merged(input_ids=torch.from_numpy(ids).long()).logits.numpy()
        assert relative_error(got, want) <= bound, dtype


def test_evaluation_and_generation_keep_the_adapters_beside_the_nf4_base(reference, trained):
    """The reasoner evaluation builds is the nf4 base plus the adapters; its greedy decoding with the KV cache
    gives the tokens that recomputing the whole sequence at each step gives."""
    from capt_jax.evaluate import load_reasoner_model
    from capt_jax.generate import Sampling, decode

    model, adapters, ids = trained
    config = load_config(REPO / "configs" / "smollm2_sft.py", [f"--config.model.path={model.path}", *QLORA])
    base, tuned, info = load_reasoner_model(config, str(reference))
    assert info["step"] == 30 and base.adapters is None and tuned.config.quantize == "nf4"
    np.testing.assert_allclose(np.asarray(tuned.logits(ids)), adapted_logits(model, adapters, ids), rtol=1e-6)
    mask = np.ones(ids.shape, bool)
    static = dict(config=tuned.config, max_new_tokens=4, sampling=Sampling(), eos_ids=(), pad_id=0)
    new = np.asarray(decode(tuned.params, ids, mask, jax.random.PRNGKey(0), tuned.adapters,
                            lora_scale=tuned.lora_scale, **static))  # fmt: skip
    sequence = ids
    for _ in range(4):
        sequence = np.concatenate([sequence, np.asarray(tuned.logits(sequence))[:, -1:].argmax(-1)], axis=1)
    np.testing.assert_array_equal(new, sequence[:, ids.shape[1] :])


def test_experiment_runner_on_an_nf4_base(tiny_chat_dir, tmp_path, capsys):
    from test_experiment import TINY

    from capt_jax.experiment import main

    work = tmp_path / "exp"
    main(["--config=configs/experiment_prontoqa_smollm2.py", "--methods=capt", "--seeds=0", f"--workdir={work}",
          f"--config.model.path={tiny_chat_dir}", *TINY, *QLORA])  # fmt: skip
    assert "| method |" in capsys.readouterr().out
    predictions = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3 * 3 and {p["method"] for p in predictions} == {"capt"}
    _, meta = ckpt.read_meta(str(work / "capt" / "seed_0"))
    assert meta["base_quantization"] == {"quantize": "nf4", "double_quant": True}


def test_bench_runs_on_a_quantized_base(capsys):
    from capt_jax.architectures import ARCHS
    from capt_jax.bench import main
    from capt_jax.model import ModelConfig, param_shapes

    def bench(*args: str) -> dict:
        main(list(args))
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    small = ["--arch", "tiny", "--config.train.batch_size=2", "--steps", "10", "--warmup", "1", "--peak-flops", "1e12"]
    quantized = ["--config.model.quantize=nf4", "--config.model.double_quant=true"]
    result = bench("train", *small, "--config.train.seq_len=32", "--config.lora.rank=4", *quantized)
    assert result["quantize"] == "nf4" and result["double_quant"]
    layers = param_shapes(ModelConfig.from_hf_dict(ARCHS["tiny"]))["layers"]
    bf16 = sum(2 * int(np.prod(layers[name]["weight"])) for name in PROJECTIONS)
    assert result["projection_bytes"] <= 0.30 * bf16
    assert abs(result["first_loss"] - 6.24) < 0.1  # ln(512): random weights, random tokens
    result = bench("generate", *small, "--prompt-len", "8", "--new-tokens", "4", "--config.model.quantize=int8")
    assert result["new_tokens_per_call"] == 8 and result["quantize"] == "int8"
