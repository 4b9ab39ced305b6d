"""Parametric shape families of the thing classes, as SemanticKITTI defines them.

Each class is a family of sub-types with real dimension ranges and random parts, so that
confusable classes overlap in bounding size (a one-body van and a pickup, a minibus and a box van,
a cargo bike and a scooter, a scooter rider and a cyclist) while fine shape still decides them:
one continuous body vs a cab with a separate cargo body, thin tubes vs body panels and an engine
block, a rider's posture and helmet. Sources for every range: `docs/synthetic.md` (SemanticKITTI's
class definitions, arXiv 1904.01416; manufacturer dimensions; anthropometric tables).

Object frame: x forward, y left, z up, origin on the ground under the centre of the bounding box.
A part is ``(kind, cx, cy, cz, a, b, c)``: a primitive of `m2s.synth.geometry` in that frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from m2s.synth.geometry import BOX, ELLIPSOID
from m2s.synth.ids import (
    BICYCLE,
    BICYCLIST,
    BUS,
    CAR,
    MOTORCYCLE,
    MOTORCYCLIST,
    ON_RAILS,
    OTHER_VEHICLE,
    PERSON,
    TRUCK,
)

Part = tuple[int, float, float, float, float, float, float]
Rng = np.random.Generator


@dataclass(frozen=True)
class Shape:
    """A drawn instance: its raw class id, parts (centred) and bounding extents (m)."""

    raw: int
    subtype: str
    parts: list[Part]
    length: float
    width: float
    height: float


def box(x: float, y: float, z0: float, z1: float, hx: float, hy: float) -> Part:
    """Axis-aligned box from height z0 to z1, half sizes hx (along x) and hy (along y)."""
    return (BOX, x, y, (z0 + z1) / 2, hx, hy, (z1 - z0) / 2)


def ell(x: float, y: float, z: float, a: float, b: float, c: float) -> Part:
    return (ELLIPSOID, x, y, z, a, b, c)


def wheel(x: float, y: float, r: float, t: float) -> Part:
    """A wheel standing on the ground: a disc of radius r and half thickness t."""
    return (ELLIPSOID, x, y, r, r, t, r)


def finish(raw: int, subtype: str, parts: list[Part]) -> Shape:
    """Centre the parts' bounding box on the origin (in x and y) and measure it."""
    p = np.asarray([q[1:] for q in parts], dtype=np.float64)
    lo = p[:, :3] - p[:, 3:]
    hi = p[:, :3] + p[:, 3:]
    mid_x, mid_y = (lo[:, 0].min() + hi[:, 0].max()) / 2, (lo[:, 1].min() + hi[:, 1].max()) / 2
    moved = [(k, cx - mid_x, cy - mid_y, cz, a, b, c) for k, cx, cy, cz, a, b, c in parts]
    size = hi.max(axis=0) - lo.min(axis=0)
    return Shape(raw, subtype, moved, float(size[0]), float(size[1]), float(hi[:, 2].max()))


def pick(rng: Rng, table: dict[str, float]) -> str:
    names = list(table)
    p = np.asarray([table[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


# ---- four-wheeled vehicles -----------------------------------------------------------------
def _wheels(length: float, width: float, r: float, overhang: float, axles: int = 2, dual: bool = False) -> list[Part]:
    xs = np.linspace(length / 2 - overhang, -length / 2 + overhang, axles)
    t = 0.14 if dual else 0.1
    return [wheel(float(x), s * (width / 2 - t - 0.02), r, t) for x in xs for s in (-1.0, 1.0)]


def car(rng: Rng) -> Shape:
    """Cars, jeeps, SUVs and vans whose body is one continuous shape (SemanticKITTI `car`).

    Sizes: compact/saloon/estate 3.6-4.9 x 1.6-1.9 x 1.4-1.6 m, SUV 4.4-5.1 x 1.8-2.0 x 1.6-1.9,
    one-body van 4.8-6.0 x 1.9-2.1 x 1.9-2.7."""
    sub = pick(rng, {"compact": 0.25, "saloon": 0.25, "estate": 0.18, "suv": 0.2, "van": 0.12})
    dims = {
        "compact": ((3.6, 4.2), (1.6, 1.8), (1.4, 1.55)),
        "saloon": ((4.3, 4.9), (1.7, 1.9), (1.4, 1.5)),
        "estate": ((4.4, 4.9), (1.75, 1.9), (1.45, 1.6)),
        "suv": ((4.4, 5.1), (1.8, 2.0), (1.6, 1.9)),
        "van": ((4.8, 6.0), (1.9, 2.1), (1.9, 2.7)),
    }[sub]
    L, W, H = (float(rng.uniform(*r)) for r in dims)
    clearance = float(rng.uniform(0.14, 0.2) if sub not in ("suv", "van") else rng.uniform(0.18, 0.26))
    r = float(rng.uniform(0.3, 0.34) if sub in ("compact", "saloon", "estate") else rng.uniform(0.33, 0.38))
    belt = clearance + float(rng.uniform(0.6, 0.72)) * (0.95 if sub != "van" else 1.0)
    hood = {"compact": (0.7, 1.0), "saloon": (0.9, 1.3), "estate": (0.9, 1.2), "suv": (0.9, 1.2), "van": (0.3, 0.8)}
    front = L / 2 - float(rng.uniform(*hood[sub]))  # the windscreen's foot
    rear = {"compact": -L / 2 + 0.15, "saloon": -L / 2 + float(rng.uniform(0.6, 0.9))}.get(sub, -L / 2 + 0.1)
    inset = float(rng.uniform(0.06, 0.14))
    parts = [
        box(0.0, 0.0, clearance, belt, L / 2, W / 2),
        box((front + rear) / 2, 0.0, belt, H, (front - rear) / 2, W / 2 - inset),
        # the windscreen's slope as a lower step in front of the cabin
        box(front + 0.2, 0.0, belt, belt + 0.55 * (H - belt), 0.2, W / 2 - inset - 0.03),
        *_wheels(L, W, r, float(rng.uniform(0.75, 0.95))),
    ]
    if sub in ("suv", "estate") and rng.random() < 0.3:  # roof box or rails
        parts.append(box(rear / 2, 0.0, H, H + float(rng.uniform(0.05, 0.4)), 0.8, 0.4))
    return finish(CAR, sub, parts)


def truck(rng: Rng) -> Shape:
    """Trucks, vans whose cargo body is separate from the cab, pickups and their trailers
    (SemanticKITTI `truck`). Pickup 5.0-6.0 x 1.8-2.1 x 1.8-2.0 m, box van / light truck
    5.5-8 x 2.0-2.5 x 2.6-3.5, heavy truck 8-12 x 2.5 x 3.5-4.0, with trailer to 16.5."""
    sub = pick(rng, {"pickup": 0.35, "box_van": 0.35, "heavy": 0.2, "trailer_truck": 0.1})
    if sub == "pickup":
        L, W, H = float(rng.uniform(5.0, 6.0)), float(rng.uniform(1.8, 2.1)), float(rng.uniform(1.8, 2.0))
        floor = float(rng.uniform(0.85, 1.0))
        cab_front = L / 2 - float(rng.uniform(1.0, 1.3))
        cab_back = cab_front - float(rng.uniform(1.5, 2.5))  # single or double cab
        bed_len = cab_back + L / 2
        wall = floor + float(rng.uniform(0.42, 0.55))
        parts = [
            box(0.0, 0.0, 0.3, floor, L / 2, W / 2),
            box((cab_front + cab_back) / 2, 0.0, floor, H, (cab_front - cab_back) / 2, W / 2 - 0.08),
            box(cab_front + 0.2, 0.0, floor, floor + 0.35, 0.2, W / 2 - 0.1),
            box(-L / 2 + bed_len / 2, W / 2 - 0.04, floor, wall, bed_len / 2, 0.04),
            box(-L / 2 + bed_len / 2, -W / 2 + 0.04, floor, wall, bed_len / 2, 0.04),
            box(-L / 2 + 0.04, 0.0, floor, wall, 0.04, W / 2),
            *_wheels(L, W, float(rng.uniform(0.36, 0.4)), float(rng.uniform(0.9, 1.2))),
        ]
        u = rng.random()
        if u < 0.3:  # hard top over the bed: the closed outline of an SUV, the cab gap stays
            parts.append(box(-L / 2 + bed_len / 2 - 0.05, 0.0, wall, H - 0.05, bed_len / 2 - 0.1, W / 2 - 0.08))
        elif u < 0.6:  # a load in the bed
            lh = float(rng.uniform(0.3, 1.0))
            parts.append(box(-L / 2 + bed_len / 2, 0.0, floor, floor + lh, bed_len / 2 - 0.25, W / 2 - 0.25))
        return finish(TRUCK, sub, parts)
    heavy = sub != "box_van"
    L = float(rng.uniform(8.0, 12.0) if heavy else rng.uniform(5.5, 8.0))
    W = 2.5 if heavy else float(rng.uniform(2.0, 2.5))
    H = float(rng.uniform(3.5, 4.0) if heavy else rng.uniform(2.6, 3.5))
    cab_len = float(rng.uniform(2.0, 2.5) if heavy else rng.uniform(1.6, 2.2))
    cab_h = float(rng.uniform(3.0, 3.8) if heavy else rng.uniform(2.2, 2.7))
    gap = float(rng.uniform(0.1, 0.35))
    r = float(rng.uniform(0.5, 0.55) if heavy else rng.uniform(0.38, 0.46))
    deck = float(rng.uniform(0.9, 1.3))
    body_front = L / 2 - cab_len - gap
    parts = [
        box(L / 2 - cab_len / 2, 0.0, 0.45, cab_h, cab_len / 2, W / 2 - 0.05),
        box(0.0, 0.0, 0.45, deck, L / 2 - 0.2, 0.45),  # chassis frame
    ]
    body = pick(rng, {"box": 0.6, "tipper": 0.2, "flatbed": 0.2}) if heavy else "box"
    blen = body_front + L / 2
    top = {"box": H, "tipper": deck + float(rng.uniform(1.0, 1.6)), "flatbed": deck + 0.1}[body]
    parts.append(box(body_front - blen / 2, 0.0, deck, top, blen / 2, W / 2))
    if body == "flatbed" and rng.random() < 0.7:
        lh = float(rng.uniform(0.5, 2.0))
        parts.append(box(body_front - blen / 2, 0.0, top, top + lh, blen / 2 - 0.6, W / 2 - 0.15))
    axles = 3 if heavy and L > 10.0 else 2
    parts += _wheels(L, W, r, float(rng.uniform(1.2, 1.8)), axles, dual=True)
    if sub == "trailer_truck":
        tl = float(rng.uniform(3.5, min(7.0, 16.5 - L)))
        tx = -L / 2 - float(rng.uniform(0.6, 1.0)) - tl / 2
        parts += [
            box(tx, 0.0, deck, deck + float(rng.uniform(1.2, H - deck)), tl / 2, W / 2),
            box(tx + tl / 2 + 0.5, 0.0, 0.6, 0.75, 0.6, 0.1),  # drawbar
            *[(k, cx + tx, cy, cz, a, b, c) for k, cx, cy, cz, a, b, c in _wheels(tl, W, r, 1.0, 2, dual=True)],
        ]
    return finish(TRUCK, sub, parts)


def other_vehicle(rng: Rng) -> Shape:
    """Buses, trams, caravans, trailers, construction and farm vehicles (SemanticKITTI
    `other-vehicle`; buses and trams carry their own raw ids, 13 and 16, mapped to it).
    Minibus 5.5-7.5 x 2.0-2.2 x 2.4-2.9 m, bus 10-18 x 2.5 x 3.0-3.4, tram 20-30 x 2.3-2.65 x
    3.3-3.6, caravan 5-8 x 2.2-2.5 x 2.5-3.0 (with drawbar), trailer 3-8 x 1.6-2.5."""
    sub = pick(rng, {"minibus": 0.08, "bus": 0.1, "caravan": 0.3, "trailer": 0.3, "tractor": 0.2, "tram": 0.02})
    if sub in ("minibus", "bus", "tram"):
        if sub == "minibus":
            L, W, H = float(rng.uniform(5.5, 7.5)), float(rng.uniform(2.0, 2.2)), float(rng.uniform(2.4, 2.9))
        elif sub == "bus":
            L = float(rng.uniform(10.0, 12.5) if rng.random() < 0.8 else rng.uniform(17.0, 18.5))
            W, H = 2.5, float(rng.uniform(3.0, 3.4))
        else:
            L, W, H = float(rng.uniform(20.0, 30.0)), float(rng.uniform(2.3, 2.65)), float(rng.uniform(3.3, 3.6))
        floor = 0.3 if sub != "minibus" else 0.35
        parts = [
            box(0.0, 0.0, floor, H - 0.15, L / 2, W / 2),
            box(0.0, 0.0, H - 0.15, H, L / 2 - 0.4, W / 2 - 0.1),  # rounded roof edge
        ]
        if sub == "minibus":  # short bonnet in front of the one-piece body
            parts[0] = box(-0.4, 0.0, floor, H - 0.15, L / 2 - 0.4, W / 2)
            parts.append(box(L / 2 - 0.4, 0.0, floor, 1.1, 0.4, W / 2 - 0.05))
        if sub == "tram":  # pantograph
            parts.append(box(0.0, 0.0, H, H + 0.6, 0.8, 0.4))
        else:
            r = 0.5 if sub == "bus" else 0.36
            parts += _wheels(L, W, r, float(rng.uniform(1.0, 2.6)), 3 if L > 15 else 2)
        return finish({"minibus": BUS, "bus": BUS, "tram": ON_RAILS}[sub], sub, parts)
    if sub == "caravan":
        body = float(rng.uniform(4.0, 6.8))
        W, H = float(rng.uniform(2.2, 2.5)), float(rng.uniform(2.5, 3.0))
        base = float(rng.uniform(0.4, 0.55))
        parts = [
            box(0.0, 0.0, base, H - 0.2, body / 2, W / 2),
            box(-0.1, 0.0, H - 0.2, H, body / 2 - 0.3, W / 2 - 0.15),
            box(body / 2 + 0.6, 0.0, 0.35, 0.5, 0.6, 0.08),  # drawbar
            *_wheels(0.01, W - 0.1, 0.3, 0.0, 1),
        ]
        return finish(OTHER_VEHICLE, sub, parts)
    if sub == "trailer":
        L, W = float(rng.uniform(3.0, 8.0)), float(rng.uniform(1.6, 2.5))
        deck = float(rng.uniform(0.5, 0.8))
        parts = [
            box(0.0, 0.0, deck - 0.1, deck, L / 2, W / 2),
            box(L / 2 + 0.6, 0.0, deck - 0.25, deck - 0.12, 0.6, 0.08),
            *_wheels(0.01, W, 0.3, 0.0, 1),
        ]
        u = rng.random()
        if u < 0.4:  # box or tarpaulin body
            parts.append(box(0.0, 0.0, deck, deck + float(rng.uniform(1.2, 2.2)), L / 2, W / 2))
        elif u < 0.8:  # side walls and some load
            parts.append(box(0.0, W / 2 - 0.03, deck, deck + 0.4, L / 2, 0.03))
            parts.append(box(0.0, -W / 2 + 0.03, deck, deck + 0.4, L / 2, 0.03))
            parts.append(box(0.0, 0.0, deck, deck + float(rng.uniform(0.2, 1.2)), L / 2 - 0.5, W / 2 - 0.3))
        return finish(OTHER_VEHICLE, sub, parts)
    # tractor / construction machine: big rear wheels, small front wheels, a cab on a bonnet
    rr, rf = float(rng.uniform(0.65, 0.85)), float(rng.uniform(0.4, 0.5))
    L, W = float(rng.uniform(3.5, 4.8)), float(rng.uniform(1.9, 2.5))
    H = float(rng.uniform(2.6, 3.1))
    parts = [
        wheel(-L / 2 + rr, W / 2 - 0.25, rr, 0.25),
        wheel(-L / 2 + rr, -W / 2 + 0.25, rr, 0.25),
        wheel(L / 2 - rf, W / 2 - 0.35, rf, 0.18),
        wheel(L / 2 - rf, -W / 2 + 0.35, rf, 0.18),
        box(L / 4, 0.0, 0.6, 1.6, L / 4 + 0.2, 0.45),  # bonnet
        box(-L / 2 + rr, 0.0, 1.2, H, 0.7, W / 2 - 0.45),  # cab
    ]
    return finish(OTHER_VEHICLE, sub, parts)


# ---- two-wheelers --------------------------------------------------------------------------
@dataclass(frozen=True)
class TwoWheeler:
    """A two-wheeler's parts plus where a rider sits and holds on (object frame before centring)."""

    parts: list[Part]
    subtype: str
    seat: tuple[float, float]  # (x, z) of the saddle
    bar: tuple[float, float, float]  # (x, z, half width) of the handlebar
    peg: tuple[float, float]  # (x, z) of pedals / footrests
    motor: bool


def bicycle_frame(rng: Rng) -> TwoWheeler:
    """City, trekking, road, mountain, children's and cargo bicycles: 1.5-1.9 x 0.5-0.7 x
    0.95-1.15 m (children's 1.1-1.4 long, cargo bikes up to 2.6), thin tubes on thin wheels."""
    sub = pick(rng, {"city": 0.4, "road": 0.15, "mtb": 0.2, "child": 0.1, "cargo": 0.08, "ebike": 0.07})
    r = float(rng.uniform(0.2, 0.25) if sub == "child" else rng.uniform(0.31, 0.36))
    base = float(rng.uniform(0.7, 0.8) if sub == "child" else rng.uniform(0.98, 1.12))
    t = 0.035 if sub == "mtb" else 0.02
    rear_x, front_x = -base / 2, base / 2
    seat_z = float(rng.uniform(0.55, 0.7) if sub == "child" else rng.uniform(0.85, 1.0))
    bar_z = seat_z + float(rng.uniform(-0.05, 0.15))
    half_bar = float(rng.uniform(0.25, 0.35))
    parts = [
        wheel(rear_x, 0.0, r, t),
        wheel(front_x, 0.0, r, t),
        box(0.0, 0.0, r + 0.05, r + 0.12, base * 0.32, 0.02),  # down tube / chain stay
        box(0.08 * base, 0.0, seat_z - 0.2, seat_z - 0.15, base * 0.3, 0.02),  # top tube
        box(-0.15 * base, 0.0, r, seat_z, 0.02, 0.02),  # seat tube
        box(-0.15 * base - 0.03, 0.0, seat_z, seat_z + 0.04, 0.13, 0.07),  # saddle
        box(front_x - 0.05, 0.0, r, bar_z, 0.025, 0.025),  # fork and stem
        box(front_x - 0.08, 0.0, bar_z, bar_z + 0.04, 0.03, half_bar),  # handlebar
    ]
    if sub == "ebike":  # battery on the down tube
        parts.append(box(0.1, 0.0, r + 0.1, r + 0.3, 0.18, 0.05))
    if sub == "cargo":  # a box between the rider and a small front wheel
        parts[1] = wheel(front_x + 0.9, 0.0, 0.25, 0.03)
        parts.append(box(front_x + 0.45, 0.0, 0.3, float(rng.uniform(0.65, 0.85)), 0.42, float(rng.uniform(0.3, 0.4))))
    if sub == "city" and rng.random() < 0.5:  # basket, rack with panniers
        parts.append(box(front_x + 0.12, 0.0, bar_z - 0.2, bar_z, 0.15, 0.17))
    if sub in ("city", "road") and rng.random() < 0.3:
        parts.append(box(rear_x + 0.05, 0.0, r + 0.15, r + 0.45, 0.22, 0.18))
    if sub == "city" and rng.random() < 0.08:  # child seat
        parts.append(box(rear_x + 0.05, 0.0, seat_z, seat_z + 0.35, 0.18, 0.16))
    return TwoWheeler(
        parts, sub, (-0.15 * base - 0.03, seat_z + 0.04), (front_x - 0.08, bar_z, half_bar), (0.0, r), False
    )


def motorcycle_frame(rng: Rng) -> TwoWheeler:
    """Scooters and mopeds (1.7-2.0 x 0.65-0.75 x 1.1-1.25 m) and motorcycles (2.0-2.4 x
    0.75-0.95 x 1.1-1.5): body panels or an engine block and tank between thick wheels."""
    sub = pick(rng, {"scooter": 0.4, "moped": 0.15, "naked": 0.2, "sport": 0.12, "touring": 0.13})
    scooter = sub in ("scooter", "moped")
    r = float(rng.uniform(0.2, 0.28) if sub == "scooter" else rng.uniform(0.28, 0.34))
    length = float(rng.uniform(1.7, 2.0) if scooter else rng.uniform(2.0, 2.4))
    base = length - 2 * r
    rear_x, front_x = -base / 2, base / 2
    t = 0.05 if scooter else 0.075
    seat_z = float(rng.uniform(0.75, 0.82) if scooter else rng.uniform(0.78, 0.9))
    bar_z = float(rng.uniform(1.0, 1.15) if scooter else rng.uniform(0.95, 1.15))
    half_bar = float(rng.uniform(0.3, 0.36) if scooter else rng.uniform(0.36, 0.46))
    parts = [wheel(rear_x, 0.0, r, t), wheel(front_x, 0.0, r, t)]
    if scooter:
        parts += [
            box(0.0, 0.0, r * 0.6, r * 0.6 + 0.12, base * 0.3, 0.18),  # step-through floorboard
            box(rear_x + 0.3, 0.0, r + 0.05, seat_z - 0.05, 0.45, float(rng.uniform(0.15, 0.22))),  # rear body
            box(front_x - 0.12, 0.0, r + 0.1, bar_z - 0.05, 0.1, float(rng.uniform(0.2, 0.3))),  # leg shield
            box(rear_x + 0.3, 0.0, seat_z - 0.05, seat_z, 0.35, 0.15),  # seat
        ]
    else:
        parts += [
            box(0.0, 0.0, 0.25, 0.62, 0.35, float(rng.uniform(0.2, 0.28))),  # engine block
            box(0.15, 0.0, 0.62, seat_z + 0.08, 0.28, 0.16),  # tank
            box(rear_x + 0.35, 0.0, seat_z - 0.08, seat_z, 0.38, 0.14),  # seat
            box(front_x - 0.05, 0.0, r, bar_z, 0.04, 0.08),  # fork
            box(rear_x + 0.1, 0.2, 0.3, 0.42, 0.35, 0.05),  # exhaust
        ]
        if sub == "sport":  # fairing
            parts.append(box(front_x - 0.2, 0.0, 0.4, bar_z + 0.05, 0.22, 0.3))
        if sub == "touring":  # windscreen and panniers
            parts.append(box(front_x - 0.15, 0.0, bar_z, bar_z + 0.35, 0.03, 0.25))
            parts.append(box(rear_x + 0.05, 0.0, 0.45, 0.85, 0.25, float(rng.uniform(0.42, 0.48))))
    parts.append(box(front_x - 0.1, 0.0, bar_z, bar_z + 0.04, 0.03, half_bar))
    if rng.random() < 0.25:  # top case
        parts.append(box(rear_x + 0.05, 0.0, seat_z, seat_z + 0.3, 0.2, 0.2))
    return TwoWheeler(parts, sub, (rear_x + 0.3, seat_z), (front_x - 0.1, bar_z, half_bar), (0.0, 0.35), True)


def bicycle(rng: Rng) -> Shape:
    frame = bicycle_frame(rng)
    return finish(BICYCLE, frame.subtype, frame.parts)


def motorcycle(rng: Rng) -> Shape:
    frame = motorcycle_frame(rng)
    return finish(MOTORCYCLE, frame.subtype, frame.parts)


# ---- people --------------------------------------------------------------------------------
def person_height(rng: Rng) -> float:
    """Adults 1.5-1.95 m (German adults average about 1.72 m, sd about 0.09), children 1.0-1.4."""
    if rng.random() < 0.12:
        return float(rng.uniform(1.0, 1.4))
    return float(np.clip(rng.normal(1.72, 0.09), 1.5, 1.95))


def _torso(x: float, z0: float, z1: float, depth: float, width: float) -> list[Part]:
    # chest and hips: two ellipsoids so the outline narrows at the waist
    mid = (z0 + z1) / 2
    return [
        ell(x, 0.0, (mid + z1) / 2, depth, width, (z1 - mid) / 2 + 0.05),
        ell(x, 0.0, (z0 + mid) / 2, depth * 0.9, width * 0.85, (mid - z0) / 2 + 0.05),
    ]


def standing_body(rng: Rng, h: float, walking: bool) -> list[Part]:
    """A standing or walking person (height h), with clothing volume and carried things."""
    bulk = float(rng.uniform(0.0, 0.06))  # clothing: a T-shirt to a winter coat
    depth, width = 0.1 * h / 1.72 + bulk, 0.17 * h / 1.72 + bulk
    hip, shoulder = 0.5 * h, 0.82 * h
    stride = float(rng.uniform(0.12, 0.3)) * h / 1.72 if walking else float(rng.uniform(0.0, 0.05))
    head = 0.065 * h
    leg = 0.06 * h / 1.72 + bulk / 3
    parts = [
        box(stride / 2, 0.09 * h / 1.72, 0.0, hip, leg, leg),
        box(-stride / 2, -0.09 * h / 1.72, 0.0, hip, leg, leg),
        *_torso(0.0, hip - 0.05, shoulder, depth, width),
        ell(0.01, 0.0, h - head * 1.15, head * 1.2, head * 1.05, head * 1.15),
        box(-stride / 3, width + 0.04, hip - 0.05, shoulder, 0.045, 0.045),  # arms swing against the legs
        box(stride / 3, -width - 0.04, hip - 0.05, shoulder, 0.045, 0.045),
    ]
    u = rng.random()
    if u < 0.15:  # backpack
        parts.append(box(-depth - 0.08, 0.0, shoulder - 0.45, shoulder - 0.05, 0.09, width * 0.8))
    elif u < 0.3:  # shoulder or shopping bag
        parts.append(box(0.0, (width + 0.12) * (1 if rng.random() < 0.5 else -1), hip - 0.3, hip + 0.05, 0.15, 0.06))
    elif u < 0.34:  # a suitcase pulled behind
        parts.append(box(-0.45, -width - 0.05, 0.05, 0.7, 0.2, 0.12))
    return parts


def sitting_body(rng: Rng, h: float) -> list[Part]:
    """A person sitting (on a bench, a wall, a step): seat 0.4-0.5 m high, thighs forward."""
    bulk = float(rng.uniform(0.0, 0.06))
    depth, width = 0.1 * h / 1.72 + bulk, 0.17 * h / 1.72 + bulk
    seat = float(rng.uniform(0.4, 0.5))
    trunk = 0.32 * h
    head = 0.065 * h
    return [
        box(0.22, 0.0, seat - 0.08, seat + 0.06, 0.24, width * 0.9),  # thighs
        box(0.44, 0.0, 0.0, seat - 0.08, 0.06, width * 0.8),  # shins
        *_torso(-0.04, seat, seat + trunk, depth, width),
        ell(0.0, 0.0, seat + trunk + head * 1.2, head * 1.2, head * 1.05, head * 1.15),
    ]


def person(rng: Rng, sitting: bool = False, walking: bool = True) -> Shape:
    """People walking, standing or sitting, of different heights, with carried things
    (SemanticKITTI `person`: not riding). 0.4-0.7 x 0.4-0.7 x 1.5-1.95 m adults."""
    h = person_height(rng)
    if sitting:
        return finish(PERSON, "sitting", sitting_body(rng, h))
    return finish(PERSON, "walking" if walking else "standing", standing_body(rng, h, walking))


def _rider(rng: Rng, frame: TwoWheeler, helmet: bool) -> list[Part]:
    """A rider on the frame: hips on the saddle, hands on the bar, feet on pedals or footrests;
    the lean follows the geometry (upright on a city bike or scooter, crouched on a sport bike)."""
    h = float(np.clip(rng.normal(1.74, 0.08), 1.55, 1.95))
    bulk = float(rng.uniform(0.02, 0.08) if helmet else rng.uniform(0.0, 0.05))
    sx, sz = frame.seat
    bx, bz, half_bar = frame.bar
    trunk = 0.32 * h
    shoulder_x = sx + 0.35 * (bx - sx) * float(rng.uniform(0.4, 1.0))
    lean = np.clip((bx - sx) / 0.9 - 0.3 + (0.25 if frame.subtype in ("road", "sport") else 0.0), 0.0, 0.8)
    shoulder_z = sz + trunk * (1.0 - 0.35 * float(lean))
    depth, width = 0.1 * h / 1.72 + bulk, 0.17 * h / 1.72 + bulk
    head = 0.085 if helmet else 0.065 * h
    px, pz = frame.peg
    knee_x = sx + 0.45 * (bx - sx)
    parts = [
        ell(
            (sx + shoulder_x) / 2,
            0.0,
            (sz + shoulder_z) / 2,
            depth + abs(shoulder_x - sx) / 2,
            width,
            (shoulder_z - sz) / 2 + 0.05,
        ),
        ell(shoulder_x + 0.04, 0.0, shoulder_z + head * 1.15, head * 1.2, head * 1.05, head * 1.15),
        box((shoulder_x + bx) / 2, width * 0.9, bz, shoulder_z - 0.05, abs(bx - shoulder_x) / 2 + 0.04, 0.045),
        box((shoulder_x + bx) / 2, -width * 0.9, bz, shoulder_z - 0.05, abs(bx - shoulder_x) / 2 + 0.04, 0.045),
        box((sx + knee_x) / 2, 0.12, sz - 0.05, sz + 0.1, abs(knee_x - sx) / 2 + 0.05, 0.07),  # thighs
        box((sx + knee_x) / 2, -0.12, sz - 0.05, sz + 0.1, abs(knee_x - sx) / 2 + 0.05, 0.07),
    ]
    pedal = float(rng.uniform(-0.15, 0.15)) if not frame.motor else 0.0
    for side, off in ((1.0, pedal), (-1.0, -pedal)):
        parts.append(box(knee_x + off / 2 - (0.0 if frame.motor else 0.05), side * 0.14, pz + 0.05, sz, 0.06, 0.06))
    return parts


def rider(rng: Rng, raw: int) -> Shape:
    """Bicyclists and motorcyclists: a person riding, or standing beside and holding, the
    two-wheeler; both get the rider's class (SemanticKITTI's definition)."""
    frame = bicycle_frame(rng) if raw == BICYCLIST else motorcycle_frame(rng)
    if rng.random() < 0.12:  # standing beside it (pushing, waiting, parking)
        h = person_height(rng) if raw == BICYCLIST else float(np.clip(rng.normal(1.74, 0.08), 1.55, 1.95))
        walker = [(k, cx, cy - 0.5, cz, a, b, c) for k, cx, cy, cz, a, b, c in standing_body(rng, h, True)]
        return finish(raw, f"{frame.subtype}-beside", frame.parts + walker)
    return finish(raw, frame.subtype, frame.parts + _rider(rng, frame, helmet=frame.motor or rng.random() < 0.4))


FAMILIES: dict[int, Callable[[Rng], Shape]] = {
    CAR: car,
    TRUCK: truck,
    OTHER_VEHICLE: other_vehicle,
    BICYCLE: bicycle,
    MOTORCYCLE: motorcycle,
    PERSON: person,
    BICYCLIST: lambda rng: rider(rng, BICYCLIST),
    MOTORCYCLIST: lambda rng: rider(rng, MOTORCYCLIST),
}


def draw_shape(kind: int, rng: Rng) -> Shape:
    """One instance of class `kind` (a static raw id among `FAMILIES`)."""
    try:
        return FAMILIES[kind](rng)
    except KeyError:
        raise ValueError(f"no shape family for raw id {kind}") from None
