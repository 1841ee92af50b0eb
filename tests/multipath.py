"""Multi-path test helpers: random feasible topologies and a reference realisation of a
multi-path network written from the rules in docs/network.md, independently of
``autodeeplab.network.Encoder`` (it only reuses the ``Stem``, ``Cell``, ``ASPP`` and decoder
modules)."""

import numpy as np
import torch.nn.functional as F
from torch import nn

from autodeeplab import space
from autodeeplab.genotype import Genotype
from autodeeplab.heads import ASPP, DeepLabV3PlusDecoder, atrous_rates_for_stride
from autodeeplab.network import Cell, Stem
from autodeeplab.topology import Topology


def random_topology(rng: np.random.Generator, cell, layers: int) -> Genotype:
    """``cell`` on a feasible multi-path topology: every active node feeds a random non-empty
    set of moves."""
    transitions, active = [], [space.STEM_LEVEL]
    for _ in range(layers):
        layer, targets = [], set()
        for s in active:
            moves = space.valid_moves(s)
            chosen = [m for m in moves if rng.random() < 0.5] or [moves[rng.integers(len(moves))]]
            for m in chosen:
                layer.append((s, space.move_target(s, m)))
                targets.add(space.move_target(s, m))
        transitions.append(tuple(layer))
        active = sorted(targets)
    return Genotype(cell=cell, topology=Topology(tuple(transitions)))


class MultiPathNet(nn.Module):
    """Reference realisation of a multi-path topology from the network's own modules: one
    Cell per transition, nodes sum their cells, one ASPP per last-layer node (outputs resized
    to the finest and summed), the DeepLabv3+ decoder; images, or volumes with
    ``spatial_dims=3``."""

    def __init__(self, genotype: Genotype, f: int, classes: int = 5, in_channels=3, spatial_dims=2):
        super().__init__()
        self.topo, self.b, self.layers = genotype.topology, genotype.blocks, genotype.layers
        topo, cell = self.topo, genotype.cell
        sd = self.sd = spatial_dims
        self.stem = Stem(in_channels, spatial_dims=sd)
        width = {(-2, 0): 64, (-1, 0): 128}
        self.pp = {}
        self.cells = nn.ModuleDict()
        for layer in range(self.layers):
            for s, t in topo.layers[layer]:
                if layer < 2:
                    pp = (layer - 2, 0)
                else:  # same level, else nearest active, finer on a tie
                    active = topo.active_levels(layer - 2)
                    pp = (layer - 2, min(active, key=lambda k, t=t: (abs(k - t), k)))
                self.pp[(layer, s, t)] = pp
                src = width[(layer - 1, s)] if layer else 128
                self.cells[f"{layer}_{s}_{t}"] = Cell(cell, width[pp], src, f * 2**t, t - s, sd)
                width[(layer, t)] = self.b * f * 2**t
        last = topo.active_levels(self.layers - 1)
        self.aspp = nn.ModuleDict(
            {
                str(k): ASPP(width[(self.layers - 1, k)], atrous_rates_for_stride(4 * 2**k), 8, sd)
                for k in last
            }
        )
        self.low = None
        for layer in range(self.layers):
            if topo.active_levels(layer) != (0,):
                break
            self.low = layer
        low_c = 128 if self.low is None else self.b * f
        self.decoder = DeepLabV3PlusDecoder(low_c, classes, 8, 8, 4, spatial_dims=sd)

    def forward(self, x):
        stem = self.stem(x)
        sizes = [tuple(stem["stride4"].shape[2:])]
        for _ in range(3):
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        nodes = {(-2, 0): stem["stride2"], (-1, 0): stem["stride4"]}
        for layer in range(self.layers):
            for level in self.topo.active_levels(layer):
                outs = [
                    self.cells[f"{layer}_{s}_{t}"](
                        nodes[self.pp[(layer, s, t)]], nodes[(layer - 1, s)], sizes[t]
                    )
                    for s, t in self.topo.layers[layer]
                    if t == level
                ]
                nodes[(layer, level)] = outs[0] if len(outs) == 1 else sum(outs[1:], outs[0])
        last = self.layers - 1
        heads = [self.aspp[k](nodes[(last, int(k))]) for k in self.aspp]
        mode = "bilinear" if self.sd == 2 else "trilinear"
        size = heads[0].shape[2:]  # the finest level comes first
        y = sum(F.interpolate(o, size=size, mode=mode) for o in heads)
        low = stem["stride4"] if self.low is None else nodes[(self.low, 0)]
        y = self.decoder(y, low)
        return F.interpolate(y, size=x.shape[2:], mode=mode)
