"""The graphs of a model package, as torch modules with positional tensor inputs (what the exporter traces).

A `SegmentationPipeline` (emseg_rt.models.pipeline) takes keyword inputs and returns dicts; ONNX graphs
take and return positional tensors. These thin wrappers fix the order, one per package component:

- `EncoderGraph`  tiles (B, 1, T, T) uint8 → `<x>_embedding` (B, C, G, G) float32   (one per encoder)
- `HeadGraph`     embeddings (+ vanilla-sam's prompts) → logits (B, K, T, T) float32, labels (B, T, T) uint8
- `FullGraph`     tiles (+ prompts) → logits, labels: preprocessing and the class merge inside
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from emseg_rt.models.pipeline import embedding_name
from emseg_rt.package import FULL, HEAD


@dataclass(frozen=True)
class ComponentGraph:
    """One graph to export: `module`'s forward takes positional inputs named `input_names` and returns
    `output_names` in that order. role: 'encoder', 'head' or 'full' (recorded in the manifest)."""

    name: str
    role: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class EncoderGraph(nn.Module):
    """One frozen encoder as a graph."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, 1, T, T) uint8, raw EM intensities → embedding (B, C, G, G) float32."""
        return self.encoder(tiles)


OUTPUTS = ("logits", "labels")  # what every family's graphs return; a family may add more (Prompt-DAS: density)


class HeadGraph(nn.Module):
    """The head (FAFM + class prompt encoder + mask decoder + class merge) as a graph."""

    def __init__(self, head: nn.Module, input_names: Sequence[str], output_names: Sequence[str] = OUTPUTS) -> None:
        super().__init__()
        self.head = head
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """inputs, in `input_names` order: each embedding (B, C, G, G) float32, then any prompts (B, ...).

        returns, in `output_names` order: logits (B, K, T, T) float32, labels (B, T, T) uint8 (0 = background),
        then any extra outputs of the family (Prompt-DAS: density (B, 1, T, T) float32).
        """
        out = self.head(**dict(zip(self.input_names, inputs)))
        return tuple(out[name] for name in self.output_names)


class FullGraph(nn.Module):
    """The whole per-slice pipeline as one graph."""

    def __init__(self, pipeline: nn.Module, prompt_names: Sequence[str], output_names: Sequence[str] = OUTPUTS
                 ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.prompt_names = tuple(prompt_names)
        self.output_names = tuple(output_names)

    def forward(self, tiles: torch.Tensor, *prompts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tiles (B, 1, T, T) uint8 (+ prompts in `prompt_names` order, batch first).

        returns, in `output_names` order: logits (B, K, T, T) float32, labels (B, T, T) uint8 (0 = background),
        then any extra outputs (as HeadGraph).
        """
        out = self.pipeline(tiles, **dict(zip(self.prompt_names, prompts)))
        return tuple(out[name] for name in self.output_names)


def component_graphs(pipeline: nn.Module) -> list[ComponentGraph]:
    """The package's graphs for a `SegmentationPipeline`: each encoder, the head, then the full graph."""
    prompts = tuple(pipeline.prompt_names)
    outputs = tuple(getattr(pipeline, "output_names", OUTPUTS))
    graphs = [
        ComponentGraph(name, "encoder", EncoderGraph(encoder), ("tiles",), (embedding_name(name),))
        for name, encoder in pipeline.encoders.items()
    ]
    head_inputs = tuple(embedding_name(name) for name in pipeline.encoders) + prompts
    graphs.append(ComponentGraph(HEAD, "head", HeadGraph(pipeline.head, head_inputs, outputs), head_inputs, outputs))
    graphs.append(ComponentGraph(FULL, "full", FullGraph(pipeline, prompts, outputs), ("tiles", *prompts), outputs))
    return graphs
