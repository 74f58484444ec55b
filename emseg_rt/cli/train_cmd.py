"""`emseg-rt train`: train a ScSAM-family head (FAFM + class prompt encoder + decoder) over cached embeddings,
a whole Prompt-DAS pipeline (`prompt-das-*`, `emseg_rt.training.prompt_das`) or one SAMDA step (`samda-*`).

The command parses its options, reads the volumes, builds the model (`models.build_model`) and one recipe
config, and hands them to the recipe, which runs the one training loop (`emseg_rt.training.loop`): progress
goes through `emseg_rt.progress` (a bar on a terminal, a line every 10 s on stderr in logs, nothing with -q).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from emseg_rt.cli.app import app
from emseg_rt.cli.eval_cmd import read_volume_or_fail
from emseg_rt.constants import GROUND_TRUTH
from emseg_rt.errors import EmsegError

if TYPE_CHECKING:
    from emseg_rt.training.samda import SamdaConfig

SAMDA_SHOTS = 10  # SAMDA §4: annotated target slices of the few-shot step

Model = Annotated[str, typer.Argument(help="Registry name of a ScSAM-family model (e.g. scsam-phantom, scsam-vit-b) "
                                      "or a Prompt-DAS model (prompt-das-tiny, prompt-das-vit-s8).")]
Data = Annotated[Path, typer.Option("--data", help="Training volume: OME-Zarr image or zarr array (Z, Y, X) uint8.")]
Labels = Annotated[str | None, typer.Option("--labels", help="Label group name inside --data, or a path to a "
                                            "label volume (0 background, 1..K classes); default: the group "
                                            "`emseg-rt phantom` writes, ground_truth.")]
Out = Annotated[Path, typer.Option("--out", help="Head checkpoint to write (CKPT; CKPT.state holds the resume state).")]
Weights = Annotated[list[Path] | None, typer.Option("--checkpoint", "--weights", "-c", help="Checkpoint(s) to load "
                                                    "first, e.g. SAM and MAE encoder files; default model: its "
                                                    "shipped weights.")]
Steps = Annotated[int, typer.Option("--steps", help="Optimiser steps in total (resume continues up to this).")]
Batch = Annotated[int | None, typer.Option("--batch", help="Tiles per step (default: ScSAM 8, Prompt-DAS 2).")]
Lr = Annotated[float | None, typer.Option("--lr", help="Learning rate (default: ScSAM §4.2 Adam 1e-3; Prompt-DAS "
                                         "§3 AdamW 1e-5 with poly decay).")]
CosWeight = Annotated[float, typer.Option("--cos-weight", help="λ of L_cos (ScSAM eq. 9: 0.2).")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints.")]
Cache = Annotated[Path | None, typer.Option("--cache", help="Embedding cache (default: CKPT.cache.zarr); an "
                                            "existing directory must be an emseg-rt embedding cache (it may be "
                                            "rebuilt).")]
EmbeddingsFrom = Annotated[Path | None, typer.Option("--embeddings-from", help="Compute the cache with this "
                                                     "exported model package's encoder graphs (ONNX Runtime) "
                                                     "instead of the torch encoders (export it from the same "
                                                     "weights you pass with --weights).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from CKPT.state.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of batch sampling.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Sigma = Annotated[float | None, typer.Option("--sigma", help="Prompt-DAS: density Gaussian σ in pixels "
                                             "(default: 10 at vit-s8 as the Prompt-DAS code, 2 at tiny).")]
PromptFraction = Annotated[float | None, typer.Option("--prompt-fraction", help="Prompt-DAS: share of each "
                                                      "window's centres given as prompts (default: random per "
                                                      "window).")]
ClassId = Annotated[int, typer.Option("--class-id", help="Prompt-DAS: label id of the objects (default 2, the "
                                      "phantom's mitochondria).")]
Target = Annotated[Path | None, typer.Option("--target", help="Prompt-DAS: unlabelled target-domain volume; "
                                             "turns on mean-teacher adaptation.")]
EmaDecay = Annotated[float, typer.Option("--ema-decay", help="Prompt-DAS: mean-teacher EMA decay.")]
ContrastiveWeight = Annotated[float, typer.Option("--contrastive-weight", help="Prompt-DAS: weight of the "
                                                  "prompt-guided contrastive loss (needs --target).")]
StopAfter = Annotated[int | None, typer.Option("--stop-after", help="Prompt-DAS: end after this step (resume "
                                               "continues exactly).")]
RecipeName = Annotated[str | None, typer.Option("--recipe", help="samda-* models: the SAMDA step, samda-source "
                                                "(labelled --data), samda-uda (unlabelled --data and --target) or "
                                                "samda-fewshot (--shots annotated slices of --data).")]
Shots = Annotated[int | None, typer.Option("--shots", help="samda-fewshot: annotated target slices used, spread "
                                           "evenly over --data (default 10, SAMDA §4).")]
Device = Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one, said in one line), "
                                     "cpu, cuda or cuda:N. Exact --resume is guaranteed on the CPU.")]


def _say(line: str) -> None:
    """Progress lines and notes go to stderr (stdout keeps the one summary line)."""
    typer.echo(line, err=True)


@app.command("train")
def train_command(
    model: Model, *, data: Data, labels: Labels = None, out: Out, weights: Weights = None, steps: Steps = 1000,
    batch: Batch = None, lr: Lr = None, cos_weight: CosWeight = 0.2, checkpoint_every: CheckpointEvery = 100,
    cache: Cache = None, embeddings_from: EmbeddingsFrom = None, resume: Resume = False, seed: Seed = 0,
    quiet: Quiet = False, sigma: Sigma = None, prompt_fraction: PromptFraction = None, class_id: ClassId = 2,
    target: Target = None, ema_decay: EmaDecay = 0.99, contrastive_weight: ContrastiveWeight = 0.0,
    stop_after: StopAfter = None, recipe: RecipeName = None, shots: Shots = None, device: Device = "auto",
) -> None:
    """Train FAFM + class prompt encoder + decoder with 0.2·L_cos + L_NTX + L_Dice on frozen encoders, or a
    whole Prompt-DAS pipeline (Dice + BCE + density MSE; optional mean teacher and contrastive loss)."""
    from emseg_rt.models.reproducible import build_model  # deferred: CLI start-up (torch loads on use)
    from emseg_rt.runtime.devices import resolve_device  # deferred: CLI start-up
    from emseg_rt.training.cache import package_embedder  # deferred: CLI start-up
    from emseg_rt.training.loop import check_out  # deferred: CLI start-up
    from emseg_rt.training.prompt_das import MeanTeacher, PromptDasConfig, train_prompt_das  # deferred
    from emseg_rt.training.samda import SamdaConfig  # deferred: CLI start-up
    from emseg_rt.training.trainer import HeadTrainConfig, train_head  # deferred: CLI start-up
    from emseg_rt.weights.fetch import resolve_checkpoints  # deferred: CLI start-up

    check_out(out, resume)  # --out first (folder, --resume, not a directory): one line before anything is read
    weights = resolve_checkpoints(weights or (), say=None if quiet else _say, progress=not quiet)  # names → files
    device = resolve_device(device, None if quiet else _say)
    if recipe is not None or model.startswith("samda-"):
        other = {"--sigma": sigma, "--prompt-fraction": prompt_fraction, "--class-id": class_id != 2 or None,
                 "--ema-decay": ema_decay != 0.99 or None, "--contrastive-weight": contrastive_weight or None,
                 "--cos-weight": cos_weight != 0.2 or None, "--cache": cache, "--embeddings-from": embeddings_from}
        config = SamdaConfig(steps=steps, checkpoint_every=checkpoint_every, stop_after=stop_after, resume=resume,
                             seed=seed, **_given(batch=batch, lr=lr))
        _train_samda(model, recipe, weights, (data, labels, target), out, shots, config, device, quiet,
                     [name for name, value in other.items() if value is not None])
        return
    prompt_das = model.startswith("prompt-das-")
    _refuse_other_family(model, prompt_das, {
        "--sigma": sigma is not None, "--prompt-fraction": prompt_fraction is not None, "--class-id": class_id != 2,
        "--target": target is not None, "--ema-decay": ema_decay != 0.99,
        "--contrastive-weight": contrastive_weight != 0.0, "--stop-after": stop_after is not None,
    }, {"--cos-weight": cos_weight != 0.2, "--cache": cache is not None,
        "--embeddings-from": embeddings_from is not None})
    if prompt_das and target is None and ema_decay != 0.99:
        raise EmsegError(f"--ema-decay {ema_decay}: the mean teacher's EMA decay needs a --target volume")
    labels = GROUND_TRUTH if labels is None else labels
    image, truth = read_volume_or_fail(data), _read_labels(data, labels)
    pipeline = build_model(model, list(weights or ())).to(device)  # same random init in every process
    if prompt_das:
        mean_teacher = MeanTeacher(targets=[read_volume_or_fail(target)], ema_decay=ema_decay) if target else None
        config = PromptDasConfig(steps=steps, sigma=sigma, prompt_fraction=prompt_fraction, mean_teacher=mean_teacher,
                                 contrastive_weight=contrastive_weight, class_id=class_id,
                                 checkpoint_every=checkpoint_every, stop_after=stop_after, resume=resume, seed=seed,
                                 **_given(batch=batch, lr=lr))
        report = train_prompt_das(pipeline, [image], [truth], out, config, say=_say, quiet=quiet)
        summary = f"steps {report.start_step}→{report.end_step} of {report.steps}"
    else:
        config = HeadTrainConfig(steps=steps, cos_weight=cos_weight, checkpoint_every=checkpoint_every,
                                 resume=resume, seed=seed, cache_path=cache, sources=(str(data.resolve()), labels),
                                 **_given(batch=batch, lr=lr))
        embedder = package_embedder(embeddings_from, model) if embeddings_from else None
        report = train_head(pipeline, image, truth, out, config, embedder=embedder, say=_say, quiet=quiet)
        summary = f"steps {report.start_step}→{report.steps} on {report.tiles} cached tiles"
    if not quiet:
        typer.echo(f"{out}: {summary} in {report.seconds:.1f} s; last loss {_last_loss(report.losses):.4f}")


def _refuse_other_family(model: str, prompt_das: bool, prompt_das_options: dict[str, bool],
                         scsam_options: dict[str, bool]) -> None:
    """One line naming the given options that belong to the other family (ScSAM heads / prompt-das-*)."""
    wrong = [name for name, given in (scsam_options if prompt_das else prompt_das_options).items() if given]
    if wrong:
        raise EmsegError(f"{', '.join(wrong)}: not an option for training {model} "
                         f"({'ScSAM heads' if prompt_das else 'prompt-das-* models'} only)")


def _read_labels(data: Path, labels: str) -> np.ndarray:
    """--labels: a label group of --data, or a label volume's path (one line when it is neither)."""
    from emseg_rt.io import list_label_groups  # deferred: CLI start-up (zarr loads on use)

    if labels in list_label_groups(data):
        return read_volume_or_fail(data, labels)
    if Path(labels).exists():
        return read_volume_or_fail(Path(labels))
    raise EmsegError(f"--labels {labels!r}: neither a label group of {data} nor an existing path")


def _given(**options: object) -> dict[str, object]:
    """The options given on the command line (not None): the rest keep the recipe config's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _last_loss(losses: list[dict[str, float]]) -> float:
    return losses[-1].get("total", float("nan")) if losses else float("nan")


def _train_samda(model: str, recipe: str | None, weights: list[Path] | None,
                 volumes: tuple[Path, str | None, Path | None], out: Path, shots: int | None, config: SamdaConfig,
                 device: str, quiet: bool, wrong: list[str]) -> None:
    """`emseg-rt train samda-* --recipe ...`: one SAMDA step with `train_samda`, on `device`.

    volumes: (--data, --labels, --target) as given; `wrong`: options given that SAMDA has no use for."""
    from emseg_rt.models.reproducible import build_model  # deferred: CLI start-up (torch loads on use)
    from emseg_rt.training.loop import check_out  # deferred: CLI start-up
    from emseg_rt.training.samda import few_shot_slices, train_samda  # deferred: CLI start-up
    from emseg_rt.training.samda import recipe as samda_recipe  # deferred: CLI start-up

    data, labels, target = volumes
    if recipe is None or not model.startswith("samda-"):
        raise EmsegError(f"--recipe {recipe}: SAMDA's steps train samda-* models" if recipe else
                         f"{model}: choose a SAMDA step with --recipe samda-source|samda-uda|samda-fewshot")
    samda_recipe(recipe)  # an unknown step is refused before anything is read or drawn
    check_out(out, config.resume)
    uda = recipe == "samda-uda"
    given = wrong + (["--shots"] if shots is not None and recipe != "samda-fewshot" else []) + (
        ["--target"] if target is not None and not uda else [])
    if given:
        raise EmsegError(f"{', '.join(given)}: not an option for --recipe {recipe}")
    if uda and target is None:
        raise EmsegError("--recipe samda-uda needs an unlabelled target-domain volume: --target")
    image = read_volume_or_fail(data)
    truth = None if uda else _read_labels(data, GROUND_TRUTH if labels is None else labels)
    if recipe == "samda-fewshot":
        slices = few_shot_slices(image.shape[0], SAMDA_SHOTS if shots is None else shots)
        image, truth = image[slices], truth[slices]
    pipeline = build_model(model, list(weights or ())).to(device)  # same random init in every process: resumable
    report = train_samda(pipeline, recipe, out, config, volumes=[image], labels=None if uda else [truth],
                         target=[read_volume_or_fail(target)] if uda else (), say=_say, quiet=quiet)
    if not quiet:
        typer.echo(f"{out}: {recipe} steps {report.start_step}→{report.end_step} of {report.steps} in "
                   f"{report.seconds:.1f} s; last loss {_last_loss(report.losses):.4f}")
