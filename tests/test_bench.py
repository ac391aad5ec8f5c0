"""Smoke tests of the benchmark command and its transformers + peft peer, on a tiny architecture on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from capt_jax.architectures import ARCHS
from capt_jax.bench import main, matmul_peak
from capt_jax.flops import generate_flops, matmul_params, train_flops_per_token
from capt_jax.lora import DEFAULT_TARGETS
from capt_jax.model import ModelConfig

TRAIN_KEYS = {"tokens_per_second", "step_time_s", "mfu", "peak_memory_bytes", "compile_s", "first_loss"}


def config(batch_size: int, seq_len: int | None = None, rank: int | None = None, alpha: int | None = None) -> list[str]:
    """The bench's config overrides for a batch (and, for train, a row length and LoRA rank and alpha)."""
    keys = {"train.batch_size": batch_size, "train.seq_len": seq_len, "lora.rank": rank, "lora.alpha": alpha}
    return [f"--config.{k}={v}" for k, v in keys.items() if v is not None]


def last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.strip()]
    return json.loads(lines[-1])


def test_flop_formula_by_hand():
    cfg = ModelConfig.from_hf_dict(ARCHS["tiny"])
    D, F, hd, L, V = 64, 128, 16, 2, 512
    n = L * (D * 4 * hd + 2 * D * 2 * hd + 4 * hd * D + 3 * D * F) + V * D
    assert matmul_params(cfg) == n
    flops = train_flops_per_token(cfg, seq=255, rank=8, targets=DEFAULT_TARGETS)
    assert flops["base"] == 4 * n
    assert flops["lora"] == 6 * L * 8 * ((D + 4 * hd) + 2 * (D + 2 * hd) + (4 * hd + D))
    assert flops["attention"] == 3 * 4 * L * 4 * hd * 128  # causal: (255 + 1) / 2 keys on average
    assert generate_flops(cfg, 2, 4, 1) == 2 * (4 * (2 * (n - V * D) + 4 * L * 4 * hd * 2.5) + 2 * V * D)


def test_cpu_peak_shrinks_its_product_on_a_slow_kernel_only():
    """A kernel at 100 GFLOP/s is measured at 2048^3; one at 1 GFLOP/s (torch's bf16 on an AMD EPYC) stops at
    512^3, where 2048^3 would take 17 s per product and stall the device check's toy run."""
    sizes = []

    def at(rate: float):
        def best_seconds(n: int) -> float:
            sizes.append(n)
            return 2.0 * n**3 / rate

        return best_seconds

    assert matmul_peak(at(100e9)) == (pytest.approx(100e9), 2048)
    assert sizes == [256, 512, 1024, 2048]
    sizes.clear()
    assert matmul_peak(at(1e13)) == (pytest.approx(1e13), 2048)  # n_max caps a kernel that would allow more
    assert sizes == [256, 512, 1024, 2048]
    sizes.clear()
    assert matmul_peak(at(1e9)) == (pytest.approx(1e9), 512)
    assert sizes == [256, 512]


def test_bench_train_and_generate_print_json_last(capsys):
    main(["train", "--arch", "tiny", *config(batch_size=2, seq_len=32, rank=4), "--steps", "10"])
    result = last_json(capsys.readouterr().out)
    assert TRAIN_KEYS <= result.keys()
    assert result["tokens_per_second"] > 0 and result["tokens_per_step"] == 64
    assert result["framework"] == "capt_jax" and result["steps"] == 10
    assert 0 < result["mfu"] < 1.5  # of a matmul peak measured in the same (possibly busy) process
    assert abs(result["first_loss"] - 6.24) < 0.1  # ln(512): random weights, random tokens

    main(
        ["generate", "--arch", "tiny", *config(batch_size=2), "--prompt-len", "8", "--new-tokens", "4", "--steps", "10"]
    )
    result = last_json(capsys.readouterr().out)
    assert result["new_tokens_per_call"] == 8 and result["tokens_per_second"] > 0
    assert result["ms_per_new_token"] > 0 and "compile_s" in result


@pytest.mark.parametrize("group_bytes", [0, 40_000, 256 * 2**20])  # one leaf per program, a few, all in one
def test_random_init_in_groups_equals_the_whole_tree(group_bytes, monkeypatch):
    import jax
    from flax.core import meta

    from capt_jax.model import decoder, init_params
    from capt_jax.model.decoder import _init

    config = ModelConfig.from_hf_dict(ARCHS["tiny"], dtype="bfloat16")
    whole = meta.unbox(jax.jit(_init, static_argnums=(0, 1, 2))(config, None, "bfloat16", jax.random.PRNGKey(4)))
    monkeypatch.setattr(decoder, "INIT_GROUP_BYTES", group_bytes)
    decoder._init_leaves.clear_cache()  # an earlier test may have compiled these groups
    leaves = init_params(config, jax.random.PRNGKey(4), "bfloat16")
    count = len(jax.tree.leaves(leaves))
    expected = {0: count, 256 * 2**20: 1}.get(group_bytes)
    made = decoder._init_leaves._cache_size()
    assert made == expected if expected else 1 < made < count
    assert jax.tree.structure(leaves) == jax.tree.structure(whole["params"])
    for got, want in zip(jax.tree.leaves(leaves), jax.tree.leaves(whole["params"])):
        assert got.dtype == want.dtype and (got == want).all()


def test_random_model_in_shards_loads_back_without_a_copy(tmp_path):
    """benchmarks/qwen3b_cpu.py's path at tiny size: shards and an index written, read back equal; on a CPU the
    loaded leaves are the aligned host buffers themselves, so loading takes the weights' bytes once."""
    import jax
    import numpy as np

    from capt_jax.model import init_params
    from capt_jax.weights import aligned_empty, hf_state_dict, load_params, save_sharded_safetensors

    config = ModelConfig.from_hf_dict(ARCHS["tiny"], dtype="bfloat16")
    params = init_params(config, jax.random.PRNGKey(5), "bfloat16")
    files = save_sharded_safetensors(tmp_path, hf_state_dict(params, config), shard_bytes=80_000)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    loaded = load_params(tmp_path, config, dtype="bfloat16", progress=False)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert got.dtype == want.dtype and (got == want).all()
    host = aligned_empty((3, 5), np.dtype("float32"))
    assert host.ctypes.data % 64 == 0 and host.shape == (3, 5)
    if jax.default_backend() == "cpu":
        assert jax.device_put(host).unsafe_buffer_pointer() == host.ctypes.data


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--arch", "no-such-arch"])
    assert "error: --arch 'no-such-arch' is not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--arch", "tiny", "--config.train.batch_size=3", "--config.train.grad_accum=2"])
    assert "'train.batch_size'=3 is not divisible" in capsys.readouterr().err


def peer(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(REPO / "benchmarks" / "peft_peer.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return last_json(proc.stdout)


def test_peer_and_bench_measure_the_same_loss_on_the_same_weights(tmp_path, capsys):
    """The peer saves its random tiny model; capt_jax.bench loads it: the first-step losses (the base model's,
    since a fresh adapter is zero) agree, so both sides time the same computation."""
    folder = tmp_path / "tiny"
    steps = ["--steps", "2", "--warmup", "1"]
    small = ["--batch", "2", "--seq", "32", "--lora-rank", "4", *steps]
    theirs = peer("train", "--arch", "tiny", "--save-model", str(folder), "--gradient-checkpointing", *small)
    assert theirs["framework"] == "peft +ckpt" and theirs["tokens_per_second"] > 0
    assert TRAIN_KEYS - {"compile_s"} <= theirs.keys()
    main(["train", f"--config.model.path={folder}", *config(batch_size=2, seq_len=32, rank=4, alpha=8), *steps])
    ours = last_json(capsys.readouterr().out)
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], abs=1e-4)

    gen = peer("generate", "--model", str(folder), "--batch", "2", "--prompt-len", "8", "--new-tokens", "4",
               "--steps", "2", "--warmup", "1")  # fmt: skip
    main(["generate", f"--config.model.path={folder}", *config(batch_size=2), "--prompt-len", "8", "--new-tokens", "4"])
    ours = last_json(capsys.readouterr().out)
    assert gen["new_tokens_per_call"] == ours["new_tokens_per_call"] == 8
    assert gen["first_tokens"][:4] == ours["first_tokens"][:4]  # greedy on the same weights: the same tokens


def test_compare_table_from_saved_results(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare import table

    base = {"bench": "train", "group": "g", "step_time_min_s": 1.0, "step_time_max_s": 1.2, "mfu": 0.5}
    rows = [
        {**base, "label": "capt_jax", "framework": "capt_jax", "tokens_per_second": 300.0, "step_time_s": 1.0},
        {**base, "label": "peft", "framework": "peft", "tokens_per_second": 200.0, "step_time_s": 1.5},
    ]
    text = table(rows)
    assert "| g | capt_jax | 300 |" in text and "1.50x" in text


def test_port_table_compares_each_case_with_its_before_run():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare import port_table

    train = {"bench": "train", "group": "t", "step_time_min_s": 1.0, "step_time_max_s": 1.2, "lower_s": 0.5}
    train.update(cpu_time_per_step_s=2.0)
    compile_ = {"bench": "compile", "group": "c", "lower_s": 1.0}
    rows = [
        {**train, "label": "capt_jax @abc", "step_time_s": 2.0, "compile_s": 4.0},
        {**train, "label": "capt_jax", "step_time_s": 2.1, "compile_s": 3.0},
        {**compile_, "label": "capt_jax @abc", "compile_s": 10.0},
        {**compile_, "label": "capt_jax", "compile_s": 11.0},
    ]
    text = port_table(rows)
    assert "| t | capt_jax | 2100 (1000-1200) |" in text and "step 1.050x, compile 0.750x" in text
    assert "| c | capt_jax | - |" in text and "compile 1.100x" in text


def test_bench_loop_times_the_real_loop_against_the_bare_step(tiny_chat_dir, capsys):
    args = ["train", "--loop", "--steps", "2", "--warmup", "1", "--config", str(REPO / "configs" / "demo_prontoqa.py")]
    args += [f"--config.model.path={tiny_chat_dir}", "--config.data.prontoqa_num_examples=40"]
    args += ["--config.data.n_train=8", "--config.train.batch_size=2", "--config.train.seq_len=128"]
    main(args)
    result = last_json(capsys.readouterr().out)
    assert result["bench"] == "train-loop" and result["steps"] == 2
    assert result["loop_s"] > 0 and all(t > 0 for t in result["bare_s"])
    assert result["loop_overhead"] == pytest.approx(result["loop_s"] / (sum(result["bare_s"]) / 2) - 1)
