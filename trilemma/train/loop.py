"""One training loop for every family, built on accelerate.

A model supplies `configure_optimizers` and `training_step` (see
`trilemma.model`); the loop does the rest: learning-rate warm-up, gradient
clipping, EMA weights, periodic atomic checkpoints with optimizer and RNG
state, `resume`, a progress bar, a JSONL log, sample grids for fixed
validation prompts, and a stop with a clear message when the loss diverges.

Data order is a pure function of the step: process p of P takes samples
[(step * P + p) * B, ... + B) of an endless indexed dataset, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed

from trilemma.checkpoint import CheckpointError, load_checkpoint, write_json
from trilemma.config import ConfigError, parse_config
from trilemma.data.sources import parse_data_config
from trilemma.data.training import build_training_set
from trilemma.folders import FolderLock, ensure_writable
from trilemma.grid import image_grid
from trilemma.progress import progress as progress_bar
from trilemma.registry import model_class
from trilemma.train.ema import EMA

DEFAULT_VALIDATION_PROMPTS = [
    "a red circle",
    "a large blue square",
    "a green circle and a yellow triangle",
    "three purple squares",
    "a cyan triangle to the left of a red square",
    "a yellow circle above a blue triangle",
    "a green triangle",  # held out of train: compositional generalization
    "two blue circles",  # held out too
]


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainConfig:
    """A recipe: what `trilemma train CONFIG.json` takes."""

    model_class: str
    model: dict
    output_dir: str = "runs/model"
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay_start: int | None = None  # from this step, decay linearly to lr_final_fraction x the rate at `steps`
    lr_final_fraction: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999
    seed: int = 0
    data: dict = field(default_factory=dict)  # model-specific: split, resolution, latent cache size...
    init: dict = field(default_factory=dict)  # model-specific: pretrained parts to start from
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 500
    snapshot_every: int = 0  # > 0: also keep the EMA model every N steps (for time-to-quality curves)
    validation_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION_PROMPTS))
    mixed_precision: str = "no"
    max_minutes: float | None = None  # stop (and save) after this much training time
    max_loss: float | None = None  # a loss above this counts as diverged (exploding), like a NaN

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no training config at {path}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder; give the recipe's JSON file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path} is nested too deeply to be a recipe") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object")
        raw.pop("_comment", None)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "recipe") -> "TrainConfig":
        """A recipe checked as a whole before anything trains: its keys and types, its data object and the
        model's own config: one line naming the fix if not."""
        config = parse_config(cls, raw, where)
        for key in ("steps", "batch_size", "keep_checkpoints", "log_every"):
            if getattr(config, key) < 1:
                raise ConfigError(f"{where}: '{key}' must be at least 1, got {getattr(config, key)}")
        for key in ("warmup_steps", "checkpoint_every", "sample_every", "snapshot_every", "grad_clip", "weight_decay"):
            value = getattr(config, key)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}: '{key}' must be a finite number of at least 0 (0: off), got {value}")
        if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
            raise ConfigError(f"{where}: 'learning_rate' must be a finite number above 0, got {config.learning_rate}")
        if config.ema_decay is not None and not 0 <= config.ema_decay < 1:
            raise ConfigError(f"{where}: 'ema_decay' must be in [0, 1) (0 or null: no EMA), got {config.ema_decay}")
        if not 0 < config.lr_final_fraction <= 1:
            raise ConfigError(f"{where}: 'lr_final_fraction' must be in (0, 1], got {config.lr_final_fraction}")
        for key in ("max_minutes", "max_loss"):
            value = getattr(config, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{where}: '{key}' must be above 0 or null, got {value}")
        if config.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"{where}: 'mixed_precision' must be one of no, fp16, bf16, got {config.mixed_precision!r}")
        parse_data_config(config.data, f"{where}: data", resolution=None)  # checked before anything trains
        try:
            klass = model_class(config.model_class)
        except KeyError as e:
            raise ConfigError(f"{where}: {e.args[0]}") from None
        parse_config(klass.config_class, config.model, f"{where}: model")
        unknown = sorted(set(config.init) - set(klass.init_keys))
        if unknown:
            takes = f"it takes {', '.join(klass.init_keys)}" if klass.init_keys else "it starts from no pretrained parts"
            raise ConfigError(f"{where}: init: {klass.__name__} does not take {', '.join(map(repr, unknown))}; {takes}")
        return config


def _optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer's state as (tensors, JSON) so it saves without pickle."""
    sd = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, state in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{pid}/{k}"] = v
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _load_optimizer(name: str, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for pid, scalars in meta["state"].items():
        state[int(pid)] = dict(scalars)
    prefix = f"{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted((output_dir / "checkpoints").glob("step-*[0-9]"))
    return ckpts[-1] if ckpts else None


def build_model(config: TrainConfig):
    return model_class(config.model_class).from_config(config.model)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train per `config`; returns the folder of the final (EMA) model. The output folder is held by this
    run (its first process) while it trains: a second run into it is refused, not interleaved."""
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(config, resume, progress)
    with FolderLock(ensure_writable(config.output_dir), "trilemma train"):
        return _train(config, resume, progress)


def _train(config: TrainConfig, resume: bool, progress: bool) -> Path:
    out = Path(config.output_dir)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True without a GPU: under torchrun (`accelerate launch --multi_gpu --num_processes N`)
    # accelerate then forms a gloo process group on the CPU (its MULTI_CPU mode).
    accelerator = Accelerator(mixed_precision=config.mixed_precision, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available())
    # Each process draws its own noise, timesteps and dropout; DDP gives all of them rank 0's initial weights.
    set_seed(config.seed, device_specific=True)
    model = build_model(config)
    model.init_training(config.init, accelerator.device)
    # The recipe's data, read once, here, into what the model declared it trains on (trilemma.data.training).
    data = parse_data_config(config.data, resolution=None)
    training = build_training_set(data, model.training_inputs(), config.seed, out, accelerator.device)
    model.fit_data(training)
    dataset = training.dataset
    model.to(accelerator.device)
    optimizers = model.configure_optimizers(config.learning_rate, config.weight_decay)
    # The recipe's learning rates, which a resumed run keeps even if the checkpoint had others.
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in optimizers.items()}
    step, train_seconds, ckpt = 0, 0.0, None

    if accelerator.is_main_process:
        _remove_leftovers(out)
    if resume:
        # The newest checkpoint that restores whole: a damaged latest one (a disk fault, a hand edit) falls back
        # to the intact one kept beside it, and says so.
        for ckpt in reversed(sorted((out / "checkpoints").glob("step-*[0-9]"))):
            try:
                step, train_seconds = _restore(ckpt, model, optimizers, accelerator)
            except CheckpointError as e:
                accelerator.print(f"warning: {ckpt} cannot be restored ({e}); trying the one before it")
                continue
            accelerator.print(f"resumed from {ckpt} at step {step}")
            break
        else:
            ckpt = None
            accelerator.print(f"no intact checkpoint under {out}/checkpoints; starting from scratch")
        if accelerator.is_main_process:
            _truncate_log(out / "log.jsonl", step)
    if step >= config.steps:
        accelerator.print(f"already trained to step {step} >= {config.steps}")

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", asdict(config))
    prepared = accelerator.prepare(model, *optimizers.values())
    ddp_model, opts = prepared[0], dict(zip(optimizers, prepared[1:]))
    model = accelerator.unwrap_model(ddp_model)
    ema = EMA(model, config.ema_decay) if config.ema_decay else None  # after DDP synced the weights
    if ema is not None and ckpt is not None:
        ema.load_state_dict(_load_tensors(ckpt / "ema.safetensors"))

    world, rank, batch = accelerator.num_processes, accelerator.process_index, config.batch_size
    # A streamed dataset (webdataset) splits its shards between processes itself and is read in order; to
    # resume, a process skips the samples it had read (the stream is a pure function of the seed).
    stream = None
    if isinstance(dataset, torch.utils.data.IterableDataset):
        stream = dataset.stream(skip=step * batch)  # a streamed source (DataSource) resumes where it stopped
    log = open(out / "log.jsonl", "a") if accelerator.is_main_process else None
    bar = progress_bar(total=config.steps, initial=step, enabled=progress and accelerator.is_main_process, desc="train")
    last_good = None
    try:
        while step < config.steps:
            if config.max_minutes is not None and _any_process(accelerator, train_seconds >= config.max_minutes * 60):
                accelerator.print(f"stopping at step {step}: reached max_minutes={config.max_minutes}")
                break
            t0 = time.perf_counter()
            if stream is not None:
                samples = [next(stream) for _ in range(batch)]
            else:
                start = (step * world + rank) * batch
                samples = [dataset[i] for i in range(start, start + batch)]
            data = _collate(samples, accelerator.device)
            lr_scale = lr_multiplier(config, step)
            losses = {}
            ddp_model.train()
            for name, opt in opts.items():
                for group, base in zip(opt.param_groups, base_lrs[name]):
                    group["lr"] = base * lr_scale
                opt.zero_grad(set_to_none=True)
                out_losses = ddp_model(data, name)
                loss = out_losses["loss"]
                # Every process must agree to stop, or the others wait in the next all-reduce forever.
                exploded = config.max_loss is not None and loss.item() > config.max_loss
                if _any_process(accelerator, not torch.isfinite(loss).item() or exploded):
                    raise TrainingDiverged(
                        f"loss of '{name}' is {loss.item():.4g} at step {step} (not finite, or above max_loss "
                        f"{config.max_loss}); training diverged. "
                        f"The last good checkpoint is {last_good or 'none'}: lower the learning rate and resume."
                    )
                accelerator.backward(loss)
                if config.grad_clip:
                    accelerator.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.grad_clip)
                opt.step()
                losses.update({(k if len(opts) == 1 else f"{name}/{k}"): v.item() for k, v in out_losses.items()})
            step += 1
            if ema is not None:
                ema.update(model, step)
            dt = time.perf_counter() - t0
            train_seconds += dt
            ips = batch * world / dt
            bar.update(1)
            bar.set_postfix(loss=f"{losses.get('loss', next(iter(losses.values()))):.4f}", img_s=f"{ips:.0f}")
            if log and (step % config.log_every == 0 or step == config.steps):
                log.write(json.dumps({"step": step, "train_seconds": round(train_seconds, 2), "img_per_s": round(ips, 1),
                                      "lr": next(iter(opts.values())).param_groups[0]["lr"], **losses}) + "\n")
                log.flush()
            if accelerator.is_main_process:
                if config.sample_every and step % config.sample_every == 0:
                    _sample_grid(model, ema, config, out / "samples" / f"step-{step:06d}.png")
                if config.snapshot_every and step % config.snapshot_every == 0:
                    _save_final(model, ema, out / "snapshots" / f"step-{step:06d}", step, train_seconds)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                last_good = _checkpoint(out, model, optimizers, ema, step, train_seconds, config.keep_checkpoints, accelerator)
    finally:
        bar.close()
        if log:
            log.close()
    accelerator.wait_for_everyone()
    final = out / "final"
    _checkpoint(out, model, optimizers, ema, step, train_seconds, config.keep_checkpoints, accelerator)
    if accelerator.is_main_process:
        _save_final(model, ema, final, step, train_seconds)
        if config.sample_every:
            _sample_grid(model, ema, config, out / "samples" / "final.png")
    accelerator.wait_for_everyone()
    return final


def lr_multiplier(config: TrainConfig, step: int) -> float:
    """Linear warm-up, constant, then (optionally) linear decay: a function of the step alone, so resume is exact."""
    scale = min(1.0, (step + 1) / max(1, config.warmup_steps))
    start = config.lr_decay_start
    if start is not None and step >= start and config.steps > start:
        done = min(1.0, (step - start) / (config.steps - start))
        scale *= 1.0 - (1.0 - config.lr_final_fraction) * done
    return scale


def _collate(samples: list[dict], device) -> dict:
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values).to(device) if isinstance(values[0], torch.Tensor) else values
    return batch


def _any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    return bool(accelerator.gather(torch.tensor([float(flag)], device=accelerator.device)).max().item() > 0)


def _rng_states(accelerator) -> dict[str, torch.Tensor]:
    """Every process's RNG state (rows by rank), so a resumed run draws what an unbroken one would."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    if accelerator.num_processes == 1:
        return {k: v.unsqueeze(0) for k, v in states.items()}
    return {k: accelerator.gather(v.to(accelerator.device).unsqueeze(0)).cpu() for k, v in states.items()}


def _checkpoint(out: Path, model, optimizers, ema, step, train_seconds, keep, accelerator) -> Path:
    """Collective (every process calls it); the main process writes."""
    rng = _rng_states(accelerator)
    path = out / "checkpoints" / f"step-{step:06d}"
    if accelerator.is_main_process:
        tensors, meta = {}, {}
        for name, opt in optimizers.items():
            t, m = _optimizer_tensors(name, opt)
            tensors.update(t)
            meta[name] = m
        state = {"step": step, "train_seconds": train_seconds, "world_size": accelerator.num_processes}
        if accelerator.scaler is not None:  # fp16 loss scaling, so a resumed fp16 run scales alike
            state["grad_scaler"] = accelerator.scaler.state_dict()
        extra = {"optimizers.safetensors": tensors or {"_empty": torch.zeros(0)}, "optimizers.json": meta,
                 "rng.safetensors": rng, "trainer_state.json": state}
        if ema is not None:
            extra["ema.safetensors"] = ema.state_dict()
        model.save_pretrained(path, extra_files=extra)
        for old in sorted((out / "checkpoints").glob("step-*[0-9]"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of checkpoint writes that a kill interrupted (the finished ones were renamed)."""
    for folder in (out, out / "checkpoints", out / "snapshots"):
        for tmp in folder.glob(".*.tmp-*") if folder.is_dir() else ():
            shutil.rmtree(tmp, ignore_errors=True)


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines past the step a run resumes from: the resumed run logs those steps again."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by the kill
    log.write_text("".join(line + "\n" for line in kept))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is missing or corrupted ({e})") from None


def _restore(ckpt: Path, model, optimizers, accelerator) -> tuple[int, float]:
    _, tensors = load_checkpoint(ckpt)
    model.load_checkpoint_tensors(tensors)
    try:
        meta = json.loads((ckpt / "optimizers.json").read_text())
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt} is not a complete training checkpoint ({e})") from None
    opt_tensors = _load_tensors(ckpt / "optimizers.safetensors")
    # One row per process; checkpoints of single-process runs before that kept one flat state.
    rng = {k: v if v.dim() == 2 else v.unsqueeze(0) for k, v in _load_tensors(ckpt / "rng.safetensors").items()}
    for name, opt in optimizers.items():
        _load_optimizer(name, opt, opt_tensors, meta[name])
    rank = accelerator.process_index
    if rng["torch"].shape[0] != accelerator.num_processes:
        accelerator.print(f"warning: {ckpt} was saved by {rng['torch'].shape[0]} processes, not "
                          f"{accelerator.num_processes}; random streams will differ from an unbroken run")
        rank = 0
    torch.set_rng_state(rng["torch"][rank])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"][rank])
    if "grad_scaler" in state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    return state["step"], state["train_seconds"]


def _save_final(model, ema, path: Path, step: int, train_seconds: float) -> None:
    if ema is not None:
        ema.swap(model)
    try:
        model.save_pretrained(path, extra_files={"training.json": {"step": step, "train_seconds": round(train_seconds, 1)}})
    finally:
        if ema is not None:
            ema.swap(model)


def _sample_grid(model, ema, config: TrainConfig, path: Path) -> None:
    if ema is not None:
        ema.swap(model)
    rng_state = torch.get_rng_state()  # sampling must not shift the training's random stream
    try:
        model.eval()
        images, captions = model.preview(config.validation_prompts, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, captions, cols=min(8, len(images))).save(path)
    finally:
        torch.set_rng_state(rng_state)
        model.train()
        if ema is not None:
            ema.swap(model)

