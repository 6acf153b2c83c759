"""Benchmarks and probes behind pipelines/benchmark.py and pipelines/probe_perception.py.

    timing             timed steps, FLOP counts, peak memory, the bf16 matmul peak
    training_step      --training-step: HiVG's step per stage and profile, the bare backbone
    inference          batch-1 latency, one JPEG end to end, throughput
    input_pipeline     decode + letterbox + augmentation per loader worker
    model_stats        --model-stats: parameters per stage, MACs and FLOPs per image
    overhead           --orchestration-overhead: a local run against one Ray Train worker
    orchestration_scale  --orchestration-scale: no-op trials, the study path vs bare Tune
    trial_overhead     --trial-overhead: a study's per-trial overhead, actor reuse off vs on
    profile_accuracy   --profile-accuracy: reference against fast, same seed, test acc50
    search_efficiency  --search-efficiency: the grid against TPE + ASHA
    probe              the perception probe (linear read-out, cell selection)
"""
