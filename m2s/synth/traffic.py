"""Things placed as in a town: parked and moving vehicles, cyclists, pedestrians, parked two-wheelers.

Placement follows where such things are in a German town, never their class: parked cars fill
parking bands (or the road edge of narrow streets) at a drawn occupancy, with a few vans, trucks,
caravans and motorcycles among them; traffic in every lane (German traffic: about 88 % cars,
light and heavy trucks, buses; motorcycles about 1-3 % of urban vehicle kilometres and far fewer
outside the summer months); cyclists at the road edge or on the sidewalk; pedestrians walking
along sidewalks (alone or in groups), standing at parked cars and shop fronts, sitting, crossing
the road, mostly at cross streets; bicycles and scooters parked on sidewalks, in racks and in
parking bays. Rates are per 100 m of street and scale with a per-sequence busyness, so some
sequences pass no person, cyclist or two-wheeler at all. `hard_rate` (config) multiplies the
rates of the hard classes (1 = the realistic benchmark; tests use more so that tiny draws hold
every class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2s.synth.builder import Actors, Builder, poses_z
from m2s.synth.geometry import Prims
from m2s.synth.ids import BICYCLE, BICYCLIST, CAR, MOTORCYCLE, MOTORCYCLIST, MOVING, OTHER_VEHICLE, PERSON, TRUCK
from m2s.synth.layout import CURB, Layout, Street
from m2s.synth.shapes import Shape, draw_shape, person

Rng = np.random.Generator
HARD = (TRUCK, OTHER_VEHICLE, MOTORCYCLE, BICYCLE, PERSON, BICYCLIST, MOTORCYCLIST)

# class weights of parked and moving vehicles (cars dominate German traffic: about 88 % of the
# registered fleet and of urban traffic; trucks, vans with a separate cargo body, buses, caravans,
# trailers and tractors share the rest; motorcycles are rare in traffic)
PARKED_MIX = {CAR: 0.91, TRUCK: 0.03, OTHER_VEHICLE: 0.04, MOTORCYCLE: 0.02}
MOVING_MIX = {CAR: 0.8985, TRUCK: 0.06, OTHER_VEHICLE: 0.04, MOTORCYCLIST: 0.0015}

_REFLECTANCE = {
    CAR: (0.05, 0.6),
    TRUCK: (0.1, 0.6),
    OTHER_VEHICLE: (0.15, 0.55),
    PERSON: (0.1, 0.5),
    BICYCLE: (0.15, 0.4),
    BICYCLIST: (0.1, 0.45),
    MOTORCYCLE: (0.15, 0.5),
    MOTORCYCLIST: (0.1, 0.5),
}


@dataclass(frozen=True)
class Traffic:
    static: Prims
    actors: Actors
    instance_class: dict[int, int]  # instance id -> static raw id of its class
    static_ids: np.ndarray
    static_poses: np.ndarray  # (K,4,4) world_from_object


@dataclass
class _Moving:
    x: list[float] = field(default_factory=list)
    d: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    d_speed: list[float] = field(default_factory=list)
    d_lo: list[float] = field(default_factory=list)
    d_hi: list[float] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)


class _Placer:
    def __init__(self, rng: Rng, street: Street, layout: Layout, hard_rate: float) -> None:
        self.rng, self.street, self.layout = rng, street, layout
        self.hard_rate = hard_rate
        # how busy this street is at this time: a log-normal factor on every rate of people and
        # two-wheelers (quiet suburban mornings to busy shopping streets)
        self.busy = float(np.exp(rng.normal(-0.2, 0.7)))
        self.static = Builder()
        self.dyn = Builder()
        self.mov = _Moving()
        self.instance_class: dict[int, int] = {}
        self.static_pose: dict[int, tuple[float, float, float, float]] = {}
        self.taken: list[tuple[float, float, float, float]] = []  # static footprints (x0, x1, d0, d1)

    # -- helpers ----------------------------------------------------------------------------
    def rate(self, per_100m: float, length: float, hard: bool = True) -> int:
        """A Poisson count of things for a stretch of `length` metres."""
        lam = per_100m * length / 100.0 * self.busy * (self.hard_rate if hard else 1.0)
        return int(self.rng.poisson(lam))

    def mix(self, weights: dict[int, float]) -> int:
        kinds = list(weights)
        w = np.asarray([weights[k] * (self.hard_rate if k in HARD else 1.0) for k in kinds])
        return kinds[int(self.rng.choice(len(kinds), p=w / w.sum()))]

    def _instance(self, raw: int) -> int:
        inst = len(self.instance_class) + 1
        self.instance_class[inst] = raw
        return inst

    def _refl(self, raw: int) -> float:
        return float(self.rng.uniform(*_REFLECTANCE.get(raw, _REFLECTANCE[OTHER_VEHICLE])))

    def free(self, x: float, d: float, half_x: float, half_d: float) -> bool:
        if self.layout.in_junction(np.array([x]), pad=half_x + 1.0)[0] and abs(d) > self.layout.road_half:
            return False
        return all(x + half_x < a or x - half_x > b or d + half_d < c or d - half_d > e for a, b, c, e in self.taken)

    def park(self, shape: Shape, x: float, d: float, z: float, turn: float, margin: float = 0.3) -> bool:
        """A standing thing at street (x, d), if the spot is free."""
        c, s = abs(np.cos(turn)), abs(np.sin(turn))
        hx = (c * shape.length + s * shape.width) / 2 + margin
        hd = (s * shape.length + c * shape.width) / 2 + margin
        if not self.free(x, d, hx, hd):
            return False
        self.taken.append((x - hx, x + hx, d - hd, d + hd))
        X, Y, hd_street = self.street.place(x, d)
        inst = self._instance(shape.raw)
        heading = float(hd_street) + turn
        self.static.add(shape.parts, float(X), float(Y), z, heading, shape.raw, inst, self._refl(shape.raw))
        self.static_pose[inst] = (float(X), float(Y), z, heading)
        return True

    def move(self, shape: Shape, x: float, d: float, z: float, speed: float, d_speed: float = 0.0,
             d_range: tuple[float, float] = (-np.inf, np.inf)) -> None:  # fmt: skip
        raw = MOVING.get(shape.raw, shape.raw)
        inst = self._instance(shape.raw)
        self.dyn.add(shape.parts, 0.0, 0.0, 0.0, 0.0, raw, inst, self._refl(shape.raw), actor=len(self.mov.x))
        m = self.mov
        m.x.append(x)
        m.d.append(d)
        m.speed.append(speed)
        m.z.append(z)
        m.d_speed.append(d_speed)
        m.d_lo.append(d_range[0])
        m.d_hi.append(d_range[1])
        m.yaw.append(np.pi if speed < 0 else (np.sign(d_speed) * np.pi / 2 if d_speed else 0.0))

    # -- placement ---------------------------------------------------------------------------
    def parked_vehicles(self, x_lo: float, x_hi: float) -> None:
        lay, rng = self.layout, self.rng
        for s, side in ((0, -1.0), (1, 1.0)):
            if lay.parking[s] > 0:
                d, occupancy = side * float(lay.road_half + lay.parking[s] / 2), float(rng.uniform(0.25, 0.85))
            elif rng.random() < 0.45:  # narrow streets: cars park on the road edge
                d, occupancy = side * float(lay.road_half - 1.0), float(rng.uniform(0.15, 0.6))
            else:
                continue
            x = x_lo + float(rng.uniform(0.0, 5.0))
            while x < x_hi:
                shape = draw_shape(self.mix(PARKED_MIX), rng)
                if rng.random() < occupancy:
                    # two-wheelers park across the bay, vehicles along it; most face the traffic
                    # direction of their side, a few the other way
                    across = shape.raw == MOTORCYCLE
                    turn = (np.pi / 2 + float(rng.uniform(-0.3, 0.3))) if across else float(rng.uniform(-0.04, 0.04))
                    if side > 0 and rng.random() < 0.85:
                        turn += np.pi
                    placed = self.park(shape, x + shape.length / 2, d, 0.0, turn, margin=0.2)
                    x += (shape.width if across else shape.length) + float(rng.uniform(0.5, 2.0)) if placed else 2.0
                else:
                    x += float(rng.uniform(4.0, 7.0))

    def traffic(self, x_lo: float, x_hi: float, duration: float, ego: tuple[int, float, float]) -> None:
        """Vehicles in every lane; a lane shares one speed so its vehicles never collide. The ego's
        lane drives at the ego's mean speed and keeps a gap around it."""
        lay, rng = self.layout, self.rng
        ego_lane, ego_x, ego_v = ego
        for s, sign in ((0, 1.0), (1, -1.0)):
            for lane in range(lay.lanes):
                d = -sign * (lay.median + (lane + 0.5) * lay.lane_width)
                is_ego = s == 0 and lane == ego_lane
                v = ego_v if is_ego else float(rng.uniform(7.0, 14.0))
                reach = v * (duration / 2 + 1.0)
                x = x_lo - reach + float(rng.uniform(0.0, 40.0))
                while x < x_hi + reach:
                    shape = draw_shape(self.mix(MOVING_MIX), rng)
                    gap = float(rng.uniform(25.0, 250.0))
                    if not (is_ego and abs(x + shape.length / 2 - ego_x) < shape.length / 2 + 14.0):
                        self.move(shape, x + shape.length / 2, d, 0.0, sign * v)
                    x += shape.length + gap

    def cyclists(self, x_lo: float, x_hi: float, duration: float) -> None:
        lay, rng = self.layout, self.rng
        for s, sign in ((0, 1.0), (1, -1.0)):
            side = -sign
            reach = 7.0 * (duration / 2 + 1.0)
            span = x_hi - x_lo + 2 * reach
            for _ in range(self.rate(0.035, span)):  # at the road edge, in the bike lane
                shape = draw_shape(BICYCLIST, rng)
                d = side * float(lay.road_half - float(rng.uniform(0.5, 0.9)))
                self.move(
                    shape, x_lo - reach + float(rng.uniform(0.0, span)), d, 0.0, sign * float(rng.uniform(3.5, 7.0))
                )
            for _ in range(self.rate(0.02, span)):  # on the sidewalk or a bike path beside it, either direction
                shape = draw_shape(BICYCLIST, rng)
                d = side * float(lay.sidewalk_in[s] + lay.sidewalk[s] * float(rng.uniform(0.3, 0.7)))
                self.move(
                    shape,
                    x_lo - reach + float(rng.uniform(0.0, span)),
                    d,
                    CURB,
                    float(rng.choice([-1.0, 1.0])) * float(rng.uniform(2.0, 4.0)),
                )
            for _ in range(self.rate(0.01, x_hi - x_lo)):  # waiting or standing with the bike
                shape = draw_shape(BICYCLIST, rng)
                d = side * float(lay.sidewalk_in[s] + lay.sidewalk[s] * float(rng.uniform(0.2, 0.8)))
                self.park(
                    shape,
                    float(rng.uniform(x_lo, x_hi)),
                    d,
                    CURB,
                    float(rng.uniform(-0.3, 0.3)) + (np.pi if side > 0 else 0.0),
                )
            for _ in range(self.rate(0.006, x_hi - x_lo)):  # a motorcyclist beside or on a parked bike
                shape = draw_shape(MOTORCYCLIST, rng)
                d = side * float(lay.road_half + max(float(lay.parking[s]) / 2, 0.0) - 0.5)
                self.park(shape, float(rng.uniform(x_lo, x_hi)), d, 0.0, float(rng.uniform(-0.3, 0.3)))

    def pedestrians(self, x_lo: float, x_hi: float, duration: float) -> None:
        lay, rng = self.layout, self.rng
        for s, side in ((0, -1.0), (1, 1.0)):
            lo, hi = float(lay.sidewalk_in[s]) + 0.35, float(lay.property_in[s]) - 0.35
            reach = 1.6 * (duration / 2 + 1.0)
            span = x_hi - x_lo + 2 * reach
            for _ in range(self.rate(0.4, span)):  # walking along the sidewalk, alone or in a group
                x0 = x_lo - reach + float(rng.uniform(0.0, span))
                v = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.9, 1.6))
                d0 = float(rng.uniform(lo, max(lo, hi)))
                size = int(rng.choice([1, 2, 3, 4], p=[0.62, 0.26, 0.08, 0.04]))
                for k in range(size):
                    dk = float(np.clip(d0 + 0.65 * k * (1 if d0 < (lo + hi) / 2 else -1), lo - 0.2, hi + 0.2))
                    self.move(person(rng), x0 + float(rng.uniform(-0.3, 0.3)), side * dk, CURB, v)
            n_stand = self.rate(0.15, x_hi - x_lo)
            for _ in range(n_stand):
                u = rng.random()
                x = float(rng.uniform(x_lo, x_hi))
                turn = float(rng.uniform(-np.pi, np.pi))
                if u < 0.55:  # standing on the sidewalk, at shop fronts, talking in groups
                    d = side * float(rng.uniform(lo, max(lo, hi)))
                    for k in range(int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))):
                        self.park(
                            person(rng, walking=False),
                            x + 0.7 * k,
                            d,
                            CURB,
                            turn + float(rng.uniform(-1.0, 1.0)),
                            margin=0.05,
                        )
                elif u < 0.85:  # standing at a parked car (loading, unlocking, chatting)
                    d = (
                        side * float(lay.parking_out[s] + 0.35)
                        if lay.parking[s] > 0
                        else side * float(lay.sidewalk_in[s] + 0.35)
                    )
                    self.park(person(rng, walking=False), x, d, CURB, turn, margin=0.05)
                else:  # sitting on a wall, a step, a bench at the property line
                    self.park(person(rng, sitting=True), x, side * (hi - 0.1), CURB, -side * np.pi / 2, margin=0.05)
        # crossing the road, half of them at cross streets
        for _ in range(self.rate(0.1, x_hi - x_lo)):
            if lay.junction_x.size and rng.random() < 0.5:
                j = int(rng.integers(0, lay.junction_x.size))
                x = float(lay.junction_x[j]) + float(rng.choice([-1.0, 1.0])) * float(lay.junction_half[j] + 1.5)
            else:
                x = float(rng.uniform(x_lo, x_hi))
            d_lo, d_hi = -float(lay.sidewalk_in[0]) - 0.5, float(lay.sidewalk_in[1]) + 0.5
            d_speed = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(1.0, 1.6))
            d0 = float(rng.uniform(d_lo, d_hi))
            self.move(person(rng), x, d0, 0.0, 0.0, d_speed, (d_lo, d_hi))

    def parked_two_wheelers(self, x_lo: float, x_hi: float) -> None:
        lay, rng = self.layout, self.rng
        for s, side in ((0, -1.0), (1, 1.0)):
            kerb = float(lay.sidewalk_in[s])
            for _ in range(self.rate(0.35, x_hi - x_lo)):  # bicycles, single or in a rack
                x = float(rng.uniform(x_lo, x_hi))
                at_kerb = rng.random() < 0.6
                d = side * (kerb + 0.9 if at_kerb else float(lay.property_in[s]) - 0.9)
                count = int(rng.choice([1, 2, 3, 5], p=[0.55, 0.25, 0.12, 0.08]))
                for k in range(count):  # racks hold them side by side, across the sidewalk
                    turn = np.pi / 2 + float(rng.uniform(-0.25, 0.25)) + (np.pi if rng.random() < 0.5 else 0.0)
                    self.park(draw_shape(BICYCLE, rng), x + 0.75 * k, d, CURB, turn, margin=0.02)
            for _ in range(self.rate(0.5, x_hi - x_lo)):  # scooters and motorcycles on the sidewalk
                x = float(rng.uniform(x_lo, x_hi))
                d = side * (kerb + 1.0)
                turn = float(rng.uniform(-0.5, 0.5)) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
                self.park(draw_shape(MOTORCYCLE, rng), x, d, CURB, turn, margin=0.05)

    def build(self, t_mid: float) -> Traffic:
        m = self.mov
        actors = Actors(
            parts=self.dyn.build(),
            actor=np.asarray(self.dyn.actor, dtype=np.int64),
            x_ref=arr(m.x),
            d=arr(m.d),
            speed=arr(m.speed),
            base_z=arr(m.z),
            t_ref=t_mid,
            d_speed=arr(m.d_speed),
            d_lo=arr(m.d_lo),
            d_hi=arr(m.d_hi),
            yaw_offset=arr(m.yaw),
        )
        ids = np.asarray(sorted(self.static_pose), dtype=np.int64)
        xyzh = np.asarray([self.static_pose[i] for i in ids.tolist()], dtype=np.float64).reshape(-1, 4)
        poses = poses_z(xyzh[:, 0], xyzh[:, 1], xyzh[:, 2], xyzh[:, 3]) if len(ids) else np.zeros((0, 4, 4))
        return Traffic(self.static.build(), actors, self.instance_class, ids, poses)


def arr(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def build_traffic(
    rng: Rng,
    street: Street,
    layout: Layout,
    x_lo: float,
    x_hi: float,
    t_mid: float,
    duration: float,
    ego: tuple[int, float, float],
    hard_rate: float,
) -> Traffic:
    """Every thing of the sequence. `ego` is (lane index, street x at t_mid, mean speed)."""
    p = _Placer(rng, street, layout, hard_rate)
    p.parked_vehicles(x_lo, x_hi)
    p.parked_two_wheelers(x_lo, x_hi)
    p.pedestrians(x_lo, x_hi, duration)
    p.cyclists(x_lo, x_hi, duration)
    p.traffic(x_lo, x_hi, duration, ego)
    return p.build(t_mid)
