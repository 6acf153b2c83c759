"""Every shipped ablation variant trains under real 2-process DDP (gloo) without
find_unused_parameters: two optimizer steps at stage 0 and at the last HiLoRA stage (DDP
raises on the second step if a trainable parameter got no gradient in the first)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hivg.orchestration.search_space import config_for, load_study, variant_trials
from tools.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml")
                 if load_study(p).kind == "variants")


def _make_batch(config, size: int, rank: int):
    from hivg.data.tokens import tokenize

    g = torch.Generator().manual_seed(rank)
    S = config.model.image_size
    image = torch.randn(size, 3, S, S, generator=g)
    pad = torch.zeros(size, S, S, dtype=torch.bool)
    tokens = tokenize(["the red circle to the left of the square"] * size,
                      config.model.context_length)
    box = torch.tensor([[0.4, 0.5, 0.2, 0.2]]).repeat(size, 1)
    return (image, pad, tokens), {"box": box, "pad_mask": pad}


def _worker(rank: int, world: int, port: int, configs: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel

    from hivg.config import Config
    from hivg.losses import build_criterion
    from hivg.model.build import build_model
    from hivg.model.lora import apply_stage

    try:
        for config_dict in configs:
            config = Config.from_dict(config_dict)
            torch.manual_seed(0)
            model = build_model(config).train()
            criterion = build_criterion(config.loss)
            # Stage 0 (bridge and heads) and the last stage (every adapter created so far).
            for stage in sorted({0, len(config.hilora.stages) - 1}):
                apply_stage(model, config.hilora, stage)
                with torch.no_grad():  # LoRA B starts at 0: give it a value so A gets gradients
                    for name, p in model.named_parameters():
                        if name.endswith(".B"):
                            p.normal_(0, 0.01)
                ddp = DistributedDataParallel(model, find_unused_parameters=False)
                params = [p for p in model.parameters() if p.requires_grad]
                opt = torch.optim.SGD(params, lr=1e-3)
                for p in params:
                    p.grad = None
                for _step in range(2):
                    x, targets = _make_batch(config, 1, rank)
                    loss = criterion(ddp(*x), targets)["loss"]
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                missing = [n for n, p in model.named_parameters()
                           if p.requires_grad and p.grad is None]
                assert not missing, f"{config.variant} stage {stage}: no gradient for {missing[:3]}"
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("study_path", STUDIES, ids=lambda p: p.stem)
def test_every_shipped_variant_takes_ddp_steps_without_unused_parameter_search(study_path):
    study = load_study(study_path)
    dataset = study.datasets[0]
    configs = [config_for(study, t.overrides, dataset, t.seed, t.variant)
               .replace({"model.weights": None}).to_dict()
               for t in variant_trials(study) if t.dataset == dataset and t.seed == study.seeds[0]]
    assert len(configs) == len(study.variants)
    mp.spawn(_worker, args=(2, free_port(), configs), nprocs=2, join=True)
