"""Static scenery of a town street: frontages (houses behind front gardens, urban blocks, parks,
yards), hedges, fences and walls, street trees, lamps, signs and street furniture.

What SemanticKITTI's recordings (Karlsruhe: suburbs, inner town, country roads) show and the
official class shares quantify: vegetation is the largest class (27.5 % of labelled points:
hedges, bushes and street trees), then road, sidewalk and building; fences (7.5 %, which include
small walls) line most properties; street furniture (bins, benches, bollards, cabinets: raw
`other-object`) and shelters (`other-structure`) are ignored by the benchmark but are there,
some of them the size of a person or a bicycle. Unlabelled garden clutter gets raw id 0.
"""

from __future__ import annotations

import numpy as np

from m2s.synth.builder import Builder
from m2s.synth.geometry import CYLINDER, ELLIPSOID, Prims
from m2s.synth.ids import (
    BUILDING,
    FENCE,
    OTHER_OBJECT,
    OTHER_STRUCTURE,
    POLE,
    TRAFFIC_SIGN,
    TRUNK,
    UNLABELED,
    VEGETATION,
)
from m2s.synth.layout import CURB, Layout, Street
from m2s.synth.shapes import Part, box, ell

Rng = np.random.Generator


def _walk(rng: Rng, x_lo: float, x_hi: float, gap: tuple[float, float]) -> list[float]:
    xs, x = [], x_lo + float(rng.uniform(0.0, gap[1]))
    while x < x_hi:
        xs.append(x)
        x += float(rng.uniform(*gap))
    return xs


def tree(rng: Rng) -> tuple[list[Part], list[Part]]:
    """A street tree: trunk parts and crown parts (crowns 3-10 m across, crown base 2-4 m)."""
    ht, rt = float(rng.uniform(1.8, 4.0)), float(rng.uniform(0.12, 0.3))
    rh, rz = float(rng.uniform(1.5, 4.5)), float(rng.uniform(1.5, 4.0))
    trunk: list[Part] = [(CYLINDER, 0.0, 0.0, ht / 2 + 0.3, rt, rt, ht / 2 + 0.3)]
    crown: list[Part] = [(ELLIPSOID, 0.0, 0.0, ht + rz * 0.8, rh, rh, rz)]
    if rng.random() < 0.5:  # irregular crowns: a second lobe
        crown.append((ELLIPSOID, rh * 0.4, rh * 0.3, ht + rz * 1.1, rh * 0.7, rh * 0.6, rz * 0.7))
    return trunk, crown


def bush(rng: Rng, size: tuple[float, float] = (0.4, 1.5)) -> list[Part]:
    r = float(rng.uniform(*size))
    return [ell(0.0, 0.0, r * 0.7, r * float(rng.uniform(0.8, 1.4)), r, r * float(rng.uniform(0.6, 1.0)))]


def furniture(rng: Rng) -> tuple[int, list[Part]]:
    """A piece of street furniture (raw other-object): bins, benches, bollards, cabinets, planters,
    crates; wheelie bins and cabinets are person-sized, a bench bicycle-sized."""
    kind = int(rng.choice(7, p=[0.22, 0.15, 0.2, 0.12, 0.1, 0.11, 0.1]))
    if kind == 0:  # wheelie bin 0.6 x 0.7 x 1.05
        return OTHER_OBJECT, [box(0.0, 0.0, 0.0, float(rng.uniform(0.95, 1.1)), 0.3, 0.35)]
    if kind == 1:  # bench with a back
        hl = float(rng.uniform(0.8, 1.0))
        return OTHER_OBJECT, [
            box(0.0, 0.0, 0.4, 0.46, hl, 0.22),
            box(-0.2, 0.0, 0.46, 0.85, 0.03, hl),
            box(0.0, hl - 0.05, 0.0, 0.4, 0.2, 0.04),
            box(0.0, -hl + 0.05, 0.0, 0.4, 0.2, 0.04),
        ]
    if kind == 2:  # bollard
        h = float(rng.uniform(0.8, 1.1))
        return OTHER_OBJECT, [(CYLINDER, 0.0, 0.0, h / 2, 0.09, 0.09, h / 2)]
    if kind == 3:  # utility cabinet 0.5-1.2 x 0.3-0.5 x 1.0-1.6
        return OTHER_OBJECT, [
            box(
                0.0,
                0.0,
                0.0,
                float(rng.uniform(1.0, 1.6)),
                float(rng.uniform(0.15, 0.25)),
                float(rng.uniform(0.25, 0.6)),
            )
        ]
    if kind == 4:  # public litter bin on a post
        return OTHER_OBJECT, [(CYLINDER, 0.0, 0.0, 0.75, 0.22, 0.22, 0.3), (CYLINDER, 0.0, 0.0, 0.25, 0.04, 0.04, 0.25)]
    if kind == 5:  # planter with a shrub (the shrub is vegetation; see `props`)
        return OTHER_OBJECT, [
            box(0.0, 0.0, 0.0, float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
        ]
    # boxes, crates, construction barriers
    return OTHER_OBJECT, [
        box(0.0, 0.0, 0.0, float(rng.uniform(0.3, 1.2)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.6)))
    ]


class _Scenery:
    def __init__(self, rng: Rng, street: Street, layout: Layout) -> None:
        self.rng, self.street, self.layout = rng, street, layout
        self.b = Builder()
        # how green this street is: the share of park and wood among its frontages (KITTI's drives
        # pass inner-town blocks, suburbs with front gardens and roads along woods and fields)
        green = float(rng.uniform(0.15, 0.6))
        rest = 1.0 - green
        self.frontage_mix = [0.55 * rest, 0.37 * rest, green, 0.08 * rest]

    def put(
        self, parts: list[Part], x: float, d: float, sem: int, refl: float, z: float = CURB, turn: float = 0.0
    ) -> None:
        X, Y, hd = self.street.place(x, d)
        self.b.add(parts, float(X), float(Y), z, float(hd) + turn, sem, 0, float(refl))

    def tree(self, x: float, d: float) -> None:
        trunk, crown = tree(self.rng)
        self.put(trunk, x, d, TRUNK, self.rng.uniform(0.25, 0.4))
        self.put(crown, x, d, VEGETATION, self.rng.uniform(0.35, 0.55))

    def boundary(self, x0: float, x1: float, d: float, side: float) -> None:
        """What separates a property from the sidewalk: hedge, fence, low wall (SemanticKITTI
        counts small walls as fence) or nothing."""
        rng = self.rng
        hl = (x1 - x0) / 2
        u = rng.random()
        if u < 0.6:
            h, w = float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.3, 0.8))
            self.put([box(0.0, 0.0, 0.0, h, hl, w)], (x0 + x1) / 2, d + side * w, VEGETATION, rng.uniform(0.35, 0.55))
        elif u < 0.88:
            h = float(rng.uniform(0.9, 1.9))
            self.put([box(0.0, 0.0, 0.0, h, hl, 0.03)], (x0 + x1) / 2, d, FENCE, rng.uniform(0.2, 0.5))
        elif u < 0.96:
            h = float(rng.uniform(0.4, 1.2))
            self.put([box(0.0, 0.0, 0.0, h, hl, 0.12)], (x0 + x1) / 2, d + side * 0.12, FENCE, rng.uniform(0.25, 0.45))

    def frontage(self, x0: float, x1: float, side: float) -> None:
        """One stretch of street front between x0 and x1 on one side."""
        rng, lay = self.rng, self.layout
        s = 1 if side > 0 else 0
        line = float(lay.property_in[s])
        kind = rng.choice(4, p=self.frontage_mix)
        length = x1 - x0
        xc = (x0 + x1) / 2
        if kind == 1:  # urban block: building at the property line, shop fronts
            depth, height = float(rng.uniform(8.0, 16.0)), float(rng.uniform(7.0, 20.0))
            setback = float(rng.uniform(0.0, 1.5))
            self.put(
                [box(0.0, 0.0, 0.0, height, length / 2 - 0.3, depth / 2)],
                xc,
                side * (line + setback + depth / 2),
                BUILDING,
                rng.uniform(0.15, 0.45),
            )
            return
        self.boundary(x0 + 0.2, x1 - 0.2, side * (line + 0.1), side)
        if kind == 0:  # house behind a front garden
            garden = float(rng.uniform(2.0, 8.0))
            hl = min(length / 2 - 1.0, float(rng.uniform(5.0, 12.0)))
            depth, height = float(rng.uniform(8.0, 14.0)), float(rng.uniform(6.0, 13.0))
            if hl > 2.0:
                self.put(
                    [box(0.0, 0.0, 0.0, height, hl, depth / 2)],
                    xc,
                    side * (line + garden + depth / 2),
                    BUILDING,
                    rng.uniform(0.15, 0.45),
                )
            for xb in _walk(rng, x0 + 1.0, x1 - 1.0, (1.2, 4.0)):  # garden bushes and shrubs
                self.put(
                    bush(rng, (0.5, 1.8)),
                    xb,
                    side * (line + float(rng.uniform(0.8, max(1.0, garden - 0.8)))),
                    VEGETATION,
                    rng.uniform(0.35, 0.55),
                )
            if rng.random() < 0.7:
                self.tree(xc + float(rng.uniform(-hl, hl)), side * (line + garden * 0.5))
            for _ in range(int(rng.integers(0, 4))):  # garden clutter nobody labelled: sheds, play things, tarpaulins
                w = float(rng.uniform(0.5, 2.5))
                self.put(
                    [box(0.0, 0.0, 0.0, float(rng.uniform(0.5, 2.2)), w, float(rng.uniform(0.4, 1.5)))],
                    xc + float(rng.uniform(-hl, hl)),
                    side * (line + float(rng.uniform(1.0, max(1.5, garden)))),
                    UNLABELED,
                    rng.uniform(0.1, 0.6),
                )
            if rng.random() < 0.45:  # wheelie bins at the gate
                for k in range(int(rng.integers(1, 4))):
                    self.put(
                        [box(0.0, 0.0, 0.0, 1.05, 0.3, 0.35)],
                        x0 + 1.0 + 0.7 * k,
                        side * (line - 0.45),
                        OTHER_OBJECT,
                        rng.uniform(0.1, 0.5),
                    )
        elif kind == 2:  # park / wood: trees and undergrowth, no building
            for xb in _walk(rng, x0, x1, (0.8, 2.5)):  # undergrowth along the edge
                self.put(
                    bush(rng, (0.6, 1.6)),
                    xb,
                    side * (line + float(rng.uniform(0.6, 2.0))),
                    VEGETATION,
                    rng.uniform(0.35, 0.55),
                )
            for xt in _walk(rng, x0, x1, (3.0, 7.0)):
                self.tree(xt, side * (line + float(rng.uniform(2.0, 14.0))))
            for xb in _walk(rng, x0, x1, (1.0, 3.0)):
                self.put(
                    bush(rng, (0.6, 1.8)),
                    xb,
                    side * (line + float(rng.uniform(1.0, 10.0))),
                    VEGETATION,
                    rng.uniform(0.35, 0.55),
                )
        else:  # yard: carport, garage or shelter (other-structure) and parked clutter
            w = min(length / 2 - 0.5, float(rng.uniform(2.5, 4.0)))
            self.put(
                [box(0.0, 0.0, 2.1, 2.3, w, 3.0), box(w - 0.1, 0.0, 0.0, 2.1, 0.08, 0.08)],
                xc,
                side * (line + 4.0),
                OTHER_STRUCTURE,
                rng.uniform(0.2, 0.5),
            )
            self.put(
                [box(0.0, 0.0, 0.0, float(rng.uniform(3.0, 6.0)), length / 2 - 0.5, 4.0)],
                xc,
                side * (line + 12.0),
                BUILDING,
                rng.uniform(0.15, 0.45),
            )

    def sidewalk_furniture(self, x_lo: float, x_hi: float, side: float) -> None:
        rng, lay = self.rng, self.layout
        s = 1 if side > 0 else 0
        kerb = float(lay.sidewalk_in[s])
        for xs in _walk(rng, x_lo, x_hi, (22.0, 40.0)):  # street lamps at the kerb, arm over the road
            if lay.in_junction(np.array([xs]), pad=1.0)[0]:
                continue
            hp = float(rng.uniform(6.0, 9.0))
            d = side * (kerb + 0.4)
            self.put(
                [
                    (CYLINDER, 0.0, 0.0, hp / 2, 0.09, 0.09, hp / 2),
                    box(0.0, -side * 0.9, hp - 0.15, hp - 0.05, 0.05, 0.9),
                ],
                xs,
                d,
                POLE,
                0.35,
            )
        for xs in _walk(rng, x_lo, x_hi, (12.0, 40.0)):  # traffic signs, plates facing the traffic
            if lay.in_junction(np.array([xs]), pad=1.0)[0]:
                continue
            hp = float(rng.uniform(2.2, 3.0))
            self.put([(CYLINDER, 0.0, 0.0, hp / 2, 0.04, 0.04, hp / 2)], xs, side * (kerb + 0.3), POLE, 0.35)
            self.put(
                [box(0.0, 0.0, hp, hp + float(rng.uniform(0.4, 0.8)), 0.02, 0.33)],
                xs,
                side * (kerb + 0.3),
                TRAFFIC_SIGN,
                0.9,
            )
        for xs in _walk(rng, x_lo, x_hi, (5.0, 20.0)):  # furniture strip along the kerb
            if lay.in_junction(np.array([xs]), pad=0.5)[0]:
                continue
            sem, parts = furniture(rng)
            self.put(
                parts,
                xs,
                side * (kerb + float(rng.uniform(0.3, 0.8))),
                sem,
                rng.uniform(0.1, 0.6),
                turn=float(rng.uniform(-0.2, 0.2)),
            )
        if rng.random() < 0.25:  # a bus shelter or advertising column somewhere along the stretch
            xs = float(rng.uniform(x_lo, x_hi))
            if not lay.in_junction(np.array([xs]), pad=2.0)[0]:
                if rng.random() < 0.5:
                    self.put(
                        [box(0.0, 0.0, 2.4, 2.5, 1.8, 0.8), box(0.0, 0.75, 0.1, 2.4, 1.8, 0.03)],
                        xs,
                        side * (kerb + 1.2),
                        OTHER_STRUCTURE,
                        0.4,
                    )
                else:
                    self.put([(CYLINDER, 0.0, 0.0, 1.6, 0.6, 0.6, 1.6)], xs, side * (kerb + 1.0), OTHER_STRUCTURE, 0.5)

    def verge_trees(self, x_lo: float, x_hi: float, side: float) -> None:
        rng, lay = self.rng, self.layout
        s = 1 if side > 0 else 0
        d = (
            side * float(lay.parking_out[s] + lay.verge[s] / 2)
            if lay.verge[s] > 0
            else side * float(lay.sidewalk_in[s] + 0.5)
        )
        if lay.verge[s] == 0 and rng.random() < 0.3:
            return  # many streets without a verge have no street trees
        for xt in _walk(rng, x_lo, x_hi, (6.0, 13.0)):
            if not lay.in_junction(np.array([xt]), pad=2.0)[0]:
                self.tree(xt, d)
                if lay.verge[s] > 1.0 and rng.random() < 0.6:
                    self.put(
                        bush(rng, (0.3, 0.7)), xt + float(rng.uniform(2.0, 4.0)), d, VEGETATION, rng.uniform(0.35, 0.55)
                    )


def build_scenery(rng: Rng, street: Street, layout: Layout, x_lo: float, x_hi: float) -> Prims:
    """All static stuff of the sequence's street between x_lo and x_hi."""
    sc = _Scenery(rng, street, layout)
    for side in (-1.0, 1.0):
        x = x_lo
        while x < x_hi:
            length = float(rng.uniform(8.0, 35.0))
            # cross streets cut the frontage: only the parts outside them are built
            js = layout.junction_x
            hits = np.flatnonzero(
                (js + layout.junction_half + 1.0 > x) & (js - layout.junction_half - 1.0 < x + length)
            )
            if hits.size:
                j = int(hits[0])
                end = float(js[j] - layout.junction_half[j] - 1.0)
                if end - x > 4.0:
                    sc.frontage(x, end, side)
                x = float(js[j] + layout.junction_half[j] + 1.0)
                continue
            sc.frontage(x, x + length, side)
            x += length
        sc.sidewalk_furniture(x_lo, x_hi, side)
        sc.verge_trees(x_lo, x_hi, side)
    return sc.b.build()
