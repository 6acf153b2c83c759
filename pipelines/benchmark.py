"""Benchmarks of the HiVG model; each mode is one function in hivg.bench (its docstring says
what is measured and how).

    python pipelines/benchmark.py --model-stats              # HiVG-B/16 and HiVG-L/14
    python pipelines/benchmark.py --model-stats --presets tiny hivg-b16
    python pipelines/benchmark.py --orchestration-overhead   # plain local run vs Ray Train
    python pipelines/benchmark.py --training-step            # tiny on CPU, hivg-b16 on CUDA
    python pipelines/benchmark.py --training-step --preset hivg-b16 --batch 64 --out b16.json
    python pipelines/benchmark.py --training-step --compile-step   # + the last stage compiled
    python pipelines/benchmark.py --step-breakdown           # hivg-l14's last stage by profiler
    python pipelines/benchmark.py --profile-accuracy         # fast vs reference, test acc50
    python pipelines/benchmark.py --search-efficiency        # grid vs TPE + ASHA, 3 seeds
    python pipelines/benchmark.py --search-efficiency --space search_spaces/x.yaml --seeds 0 1 2
    python pipelines/benchmark.py --orchestration-scale      # 1,000 no-op trials: study vs Tune
    python pipelines/benchmark.py --orchestration-scale --trials 100 --max-concurrent 16
    python pipelines/benchmark.py --trial-overhead [--short]  # the demo, actor reuse off vs on
"""
from __future__ import annotations

from hivg.cli import run_main
from hivg.cli_args import Parser
from hivg.config import preset_names
from hivg.errors import UserError

DEFAULT_OUT = "benchmark-training.json"
SEARCH_STORAGE = "runs/search-efficiency"


def parse_args():
    p = Parser(description=__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model-stats", action="store_true",
                      help="parameters per stage and forward MACs/FLOPs per image")
    mode.add_argument("--orchestration-overhead", action="store_true",
                      help="per-epoch time and start-up: local run vs one Ray Train worker")
    mode.add_argument("--training-step", action="store_true",
                      help="training step at stage 0 and the last stage, reference vs fast")
    mode.add_argument("--step-breakdown", action="store_true",
                      help="one training step's time by part (attention, adapters, bridge, "
                           "optimizer, launches) from torch's profiler")
    mode.add_argument("--profile-accuracy", action="store_true",
                      help="the tiny model trained under reference and fast, same seed: test acc50")
    mode.add_argument("--search-efficiency", action="store_true",
                      help="the full grid vs TPE + ASHA over the same space (--space)")
    mode.add_argument("--orchestration-scale", action="store_true",
                      help="no-op trials through the study path and through bare Ray Tune: "
                           "driver overhead per result, peak memory, MLflow, table/report time")
    mode.add_argument("--trial-overhead", action="store_true",
                      help="a variants study (--study) with Tune's actor reuse off, then on: "
                           "per-trial overhead against the trials' run wall time")
    p.add_argument("--study", default="search_spaces/demo.yaml",
                   help="trial overhead: the variants study (default: the embedded demo)")
    p.add_argument("--short", action="store_true",
                   help="trial overhead: a shortened copy (300 training expressions, one "
                        "epoch per stage, random init)")
    p.add_argument("--trials", type=int, default=1000, help="orchestration scale: trials")
    p.add_argument("--max-concurrent", type=int, default=32,
                   help="orchestration scale: trials at once")
    p.add_argument("--results-per-trial", type=int, default=10,
                   help="orchestration scale: results each no-op trial reports")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="training-step model (default: hivg-b16 on CUDA, tiny on CPU; step "
                        "breakdown: hivg-l14 on CUDA)")
    p.add_argument("--batch", type=int, default=None,
                   help="training-step batch (default: 64 on CUDA, 8 on CPU)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per row")
    p.add_argument("--inference-batch", type=int, default=None,
                   help="training-step run: batched inference size (default 256 CUDA, 32 CPU)")
    p.add_argument("--pipeline-images", type=int, default=None,
                   help="training-step run: JPEGs in the input-pipeline test (512 CUDA, 128 CPU)")
    p.add_argument("--compile", action="store_true",
                   help="training-step run: torch.compile the model for the inference rows "
                        "(mode reduce-overhead, i.e. CUDA graphs, on a GPU)")
    p.add_argument("--compile-step", nargs="?", const="inductor", default=None,
                   metavar="BACKEND",
                   help="training-step run: also time the last stage and the bare towers under "
                        "fast with the forward and loss compiled (default backend inductor, "
                        "CUDA graphs on a GPU; aot_eager checks the path without code generation)")
    p.add_argument("--stage", type=int, default=None,
                   help="step breakdown: HiLoRA stage index (default: the last)")
    p.add_argument("--inference-only", action="store_true",
                   help="training-step run: only the inference rows (e.g. a second, --compile "
                        "pass without re-timing the training steps)")
    p.add_argument("--space", default="search_spaces/search_efficiency.yaml",
                   help="study file with a space: (search efficiency)")
    p.add_argument("--storage", default=SEARCH_STORAGE,
                   help="storage for the search-efficiency studies (default) or the "
                        "profile-accuracy runs (default runs/profile-accuracy), or the "
                        "orchestration-scale runs (default: a new temporary folder)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="TPE searcher seeds (search efficiency)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="TPE trials per seed (default: the study file's num_samples)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON output (default: ./benchmark-training.json; with "
                        "--search-efficiency ./search-efficiency.json)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per run (overhead and profile-accuracy benchmarks)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="profile accuracy: val/test expressions used (default: all)")
    p.add_argument("--random-init", action="store_true",
                   help="profile accuracy: random CLIP weights instead of the tiny pre-training")
    p.add_argument("--threads", type=int, default=2, help="compute threads in both runs")
    p.add_argument("--address", default=None,
                   help="orchestration overhead: join this running Ray cluster (auto or "
                        "HOST:PORT, the `ray up` case) instead of starting a local one")
    p.add_argument("--train-samples", type=int, default=1200,
                   help="training expressions (overhead and profile-accuracy benchmarks)")
    p.add_argument("--presets", nargs="+", default=["hivg-b16", "hivg-l14"], choices=preset_names(),
                   help="model presets (default: hivg-b16 hivg-l14)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    check_args(args)
    if args.training_step:
        from hivg.bench.training_step import run_training_step

        run_training_step(args.preset, args.batch, args.steps, args.warmup, args.out,
                          args.inference_batch, args.pipeline_images, args.compile,
                          args.inference_only, args.compile_step)
    if args.step_breakdown:
        from hivg.bench.step_breakdown import run_step_breakdown

        run_step_breakdown(args.preset, args.stage, args.batch, args.steps, args.warmup,
                           args.out if args.out != DEFAULT_OUT else "step-breakdown.json")
    if args.model_stats:
        from hivg.bench.model_stats import run_model_stats

        run_model_stats(args.presets)
    if args.orchestration_overhead:
        from hivg.bench.overhead import run_orchestration_overhead

        run_orchestration_overhead(args.epochs, args.threads, args.train_samples, args.address)
    if args.profile_accuracy:
        from hivg.bench.profile_accuracy import run_profile_accuracy

        run_profile_accuracy(args.storage if args.storage != SEARCH_STORAGE else
                             "runs/profile-accuracy", args.train_samples, args.epochs,
                             args.out if args.out != DEFAULT_OUT else "profile-accuracy.json",
                             args.eval_samples, args.random_init)
    if args.search_efficiency:
        from hivg.bench.search_efficiency import run_search_efficiency

        run_search_efficiency(args.space, args.storage, args.seeds, args.num_samples,
                              args.out if args.out != DEFAULT_OUT else "search-efficiency.json")
    if args.orchestration_scale:
        from hivg.bench.orchestration_scale import run_orchestration_scale

        for flag, value in (("--trials", args.trials), ("--max-concurrent", args.max_concurrent),
                            ("--results-per-trial", args.results_per_trial)):
            if value < 1:
                raise UserError(f"{flag}: expected a positive number, got {value}")
        run_orchestration_scale(args.trials, args.max_concurrent, args.results_per_trial,
                                args.out if args.out != DEFAULT_OUT
                                else "orchestration-scale.json",
                                storage=args.storage if args.storage != SEARCH_STORAGE else None)
    if args.trial_overhead:
        from hivg.bench.trial_overhead import run_trial_overhead

        run_trial_overhead(args.study, args.short,
                           args.out if args.out != DEFAULT_OUT else "trial-overhead.json")
    return 0


def check_args(args) -> None:
    """Flags in range, Ray's address well formed, before any benchmark starts."""
    from hivg.checks import check_address, check_count, require_module

    for flag in ("batch", "steps", "inference_batch", "pipeline_images", "num_samples",
                 "epochs", "threads", "train_samples", "eval_samples"):
        check_count("--" + flag.replace("_", "-"), getattr(args, flag), 1)
    check_count("--warmup", args.warmup, 0)
    check_count("--stage", args.stage, 0)
    if args.compile_step is not None:
        if not args.training_step or args.inference_only:
            raise UserError("--compile-step: times training steps; use it with --training-step "
                            "(without --inference-only)")
        from torch._dynamo import list_backends

        known = list_backends(exclude_tags=())
        if args.compile_step not in known:
            raise UserError(f"--compile-step: unknown torch.compile backend "
                            f"{args.compile_step!r} (expected one of torch._dynamo's, e.g. "
                            f"inductor, aot_eager or cudagraphs)")
    check_address(args.address)
    if args.orchestration_overhead or args.search_efficiency:
        require_module("ray", "cluster", "this benchmark (Ray)")


if __name__ == "__main__":
    run_main(main)
