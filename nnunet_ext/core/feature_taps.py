"""Feature taps: intermediate features of nnU-Net's U-Nets, collected during the normal forward pass.

nnU-Net's networks (dynamic_network_architectures ``PlainConvUNet`` and ``ResidualEncoderUNet``,
2D and 3D) have no hooks of their own. ``FeatureTaps`` registers forward hooks on exactly the
blocks that were asked for and nothing else, so:

- the network's outputs are untouched (hooks only read),
- deep supervision on or off makes no difference (decoder stages always run),
- DDP works (the DDP wrapper's forward is still what the trainer calls, gradients of the tapped
  features flow back through the same graph),
- ``torch.compile`` works: hooks are registered after ``torch.compile()`` wraps the network but
  before its first call (compilation is lazy), write into one long-lived dict that is cleared in
  place, and are traced by dynamo together with the modules they sit on,
- asking for no feature registers no hook: zero cost,
- features are only kept while autograd is on (training steps); under ``torch.no_grad`` /
  ``inference_mode`` (validation, sliding-window prediction) the hooks store nothing.

Remove taps (``remove``) only before the network's first compiled call: dynamo does not notice hooks
removed from an already compiled graph.

Tap point names (stage 0 is the highest resolution encoder stage; decoder stage 0 is the one just
above the bottleneck, the last decoder stage is at full resolution, as in ``UNetDecoder``):

- ``encoder.{i}.first`` / ``encoder.{i}.last``: output of the first / last conv block of encoder
  stage i (for ``ResidualEncoderUNet``: first / last residual block). ``encoder.{i}`` is the stage
  output, i.e. the same tensor as ``encoder.{i}.last``.
- ``decoder.{i}.first`` / ``decoder.{i}.last`` / ``decoder.{i}``: likewise for decoder stages.
- ``decoder.final``: the last decoder feature, the input of the segmentation head.

A module that holds several U-Nets (CPS's ``CPSNetworkPair``: ``net_a``, ``net_b``) is tapped with names
prefixed by the dotted path of the sub-network: ``net_a.encoder.1`` is ``encoder.1`` of ``network.net_a``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from nnunet_ext.core.network import unwrap_network


class UntappableNetworkError(TypeError):
    """The network's architecture is not one whose internal features we know how to reach."""


def _blocks_of_stage(stage: nn.Module, where: str) -> nn.Sequential:
    """The sequence of conv / residual blocks inside one U-Net stage.

    A stage is a ``StackedConvBlocks`` (``.convs``), a ``StackedResidualBlocks`` (``.blocks``), or an
    ``nn.Sequential`` that holds one of those after an optional pooling layer.
    """
    if hasattr(stage, "convs") and isinstance(stage.convs, nn.Sequential):
        return stage.convs
    if hasattr(stage, "blocks") and isinstance(stage.blocks, nn.Sequential):
        return stage.blocks
    if isinstance(stage, nn.Sequential):
        for sub in reversed(list(stage)):
            if hasattr(sub, "convs") or hasattr(sub, "blocks"):
                return _blocks_of_stage(sub, where)
    raise UntappableNetworkError(f"cannot find conv blocks in {where} ({type(stage).__name__})")


def tap_points(network: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Map every tap point name to the module whose forward output is that feature.

    Raises ``UntappableNetworkError`` naming the class for architectures other than U-Nets with a
    dynamic_network_architectures-style encoder (``stages``) and ``UNetDecoder``.
    """
    net = unwrap_network(network)
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    ok = (encoder is not None and decoder is not None and hasattr(encoder, "stages")
          and hasattr(decoder, "stages") and hasattr(decoder, "seg_layers") and hasattr(decoder, "transpconvs"))
    if not ok:
        raise UntappableNetworkError(
            f"nnunet_ext feature taps support U-Nets with an encoder.stages / UNetDecoder layout "
            f"(dynamic_network_architectures PlainConvUNet, ResidualEncoderUNet); got {type(net).__module__}."
            f"{type(net).__name__}. Use a plans file with one of those architectures or extend "
            f"nnunet_ext.core.feature_taps.tap_points for this class.")
    points: "OrderedDict[str, nn.Module]" = OrderedDict()
    try:
        for prefix, stages in (("encoder", encoder.stages), ("decoder", decoder.stages)):
            for i, stage in enumerate(stages):
                blocks = _blocks_of_stage(stage, f"{prefix}.stages[{i}]")
                points[f"{prefix}.{i}.first"] = blocks[0]
                points[f"{prefix}.{i}.last"] = blocks[-1]
                points[f"{prefix}.{i}"] = blocks[-1]
    except UntappableNetworkError as e:
        raise UntappableNetworkError(f"{type(net).__name__}: {e}") from None
    points["decoder.final"] = points[f"decoder.{len(decoder.stages) - 1}.last"]
    return points


def split_network_path(name: str) -> Tuple[str, str]:
    """``("net_a", "encoder.1")`` for the tap name ``net_a.encoder.1``; ``("", name)`` for an unprefixed name."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in ("encoder", "decoder"):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return "", name


def resolve_tap_points(network: nn.Module, names: Iterable[str]) -> "OrderedDict[str, nn.Module]":
    """The module of every tap name in ``names`` (prefixed names reach sub-networks, see the module docstring).

    Raises ``KeyError`` naming the unknown names and the available ones, ``UntappableNetworkError`` for a
    (sub-)network that is not a supported U-Net.
    """
    net, names = unwrap_network(network), list(names)
    by_prefix: Dict[str, "OrderedDict[str, nn.Module]"] = {}
    points: "OrderedDict[str, nn.Module]" = OrderedDict()
    for name in names:
        prefix, rest = split_network_path(name)
        if prefix not in by_prefix:
            try:
                sub = net.get_submodule(prefix) if prefix else net
            except AttributeError:
                sub = None
            by_prefix[prefix] = tap_points(sub) if sub is not None else OrderedDict()
        if rest in by_prefix[prefix]:
            points[name] = by_prefix[prefix][rest]
    unknown = [n for n in names if n not in points]
    if unknown:
        available = [f"{p}.{k}" if p else k for p, pts in by_prefix.items() for k in pts]
        raise KeyError(f"unknown feature tap(s) {unknown} for {type(net).__name__}; available: {available}")
    return points


def stage_block_names(network: nn.Module, parts: Sequence[str] = ("encoder", "decoder")) -> List[str]:
    """``[<part>.<i>.first, <part>.<i>.last, ...]`` for every stage, in forward order.

    Where a stage has a single block, first and last are the same tensor and only ``.last`` is
    listed, so no feature is counted twice.
    """
    points = tap_points(network)
    names = []
    for part in parts:
        i = 0
        while f"{part}.{i}.first" in points:
            if points[f"{part}.{i}.first"] is not points[f"{part}.{i}.last"]:
                names.append(f"{part}.{i}.first")
            names.append(f"{part}.{i}.last")
            i += 1
    return names


class FeatureTaps:
    """Collect named intermediate features of a U-Net during its ordinary forward pass.

    >>> taps = FeatureTaps(network, ["encoder.4.last", "decoder.final"])
    >>> out = network(x)          # any wrapper: DDP, torch.compile, deep supervision on or off
    >>> feats = taps.pop()        # {"encoder.4.last": tensor, "decoder.final": tensor}

    Features keep their autograd graph, so losses on them train the network. ``pop`` returns what
    the last forward pass with autograd enabled produced and empties the store (also frees the
    references). ``remove`` unregisters the hooks.
    """

    def __init__(self, network: nn.Module, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))
        points = resolve_tap_points(network, self.names)
        self._store: Dict[str, torch.Tensor] = {}
        self._handles = []
        by_module: Dict[int, List[str]] = {}
        modules = {}
        for n in self.names:
            by_module.setdefault(id(points[n]), []).append(n)
            modules[id(points[n])] = points[n]
        for key, names_here in by_module.items():
            self._handles.append(modules[key].register_forward_hook(self._make_hook(tuple(names_here))))

    def _make_hook(self, names_here):
        store = self._store

        def hook(module, inputs, output):
            # only when autograd is on (training): validation and inference stay exactly stock and
            # keep nothing alive; under torch.compile grad mode is a global guard, so this adds no graph
            if torch.is_grad_enabled():
                for n in names_here:
                    store[n] = output
        return hook

    def pop(self) -> Dict[str, torch.Tensor]:
        """The features of the last forward pass; empties the store."""
        out = dict(self._store)
        self._store.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store.clear()

    def __bool__(self) -> bool:
        return bool(self.names)
