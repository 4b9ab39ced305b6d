"""The synthetic street: static scenery, actors, the ego trajectory and the KITTI calibration.

World frame: z up, ground (road surface) at z = 0. The street centre line is ``y = f(x)``, a
gentle sinusoid, and a lateral street coordinate ``d`` (positive to the left of +x) places
everything across the street::

    |d| < 7      road, 4 lanes (+x traffic on d < 0, the ego drives at d = -1.75), lane markings
    7 .. 9.5     parking band (parked vehicles)
    9.5 .. 12.5  sidewalk, raised by a curb (walking and standing people, parked bicycles)
    12.5 .. 15.5 terrain strip (trees, street lamps, traffic signs)
    > 16         buildings with fences / hedges in the gaps, terrain in front

Raw semantic ids are those of the official SemanticKITTI configuration. Things (vehicles,
two-wheelers, people) get an instance id, unique in the sequence and fixed for its duration;
stuff gets instance 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2s.errors import ConfigError
from m2s.synth.config import SynthConfig
from m2s.synth.geometry import BOX, CYLINDER, ELLIPSOID, Prims

# ---- raw ids (official SemanticKITTI config) ----------------------------------------------
CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE = 10, 11, 15, 18, 20
PERSON, BICYCLIST, MOTORCYCLIST = 30, 31, 32
ROAD, PARKING, SIDEWALK, BUILDING, FENCE, LANE_MARKING = 40, 44, 48, 50, 51, 60
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
MOVING = {CAR: 252, BICYCLIST: 253, PERSON: 254, MOTORCYCLIST: 255, TRUCK: 258, OTHER_VEHICLE: 259}

USED_RAW_IDS = sorted(
    {CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST, ROAD, PARKING, SIDEWALK}
    | {BUILDING, FENCE, LANE_MARKING, VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN}
    | set(MOVING.values())
)

ROAD_HALF, PARKING_OUT, SIDEWALK_OUT, TERRAIN_OUT = 7.0, 9.5, 12.5, 15.5
CURB = 0.12  # height of everything beyond the parking band
EGO_D = -1.75
MARGIN = 100.0  # scenery beyond the first/last ego position (m)


# ---- street geometry -----------------------------------------------------------------------
@dataclass(frozen=True)
class Street:
    amplitude: float
    wavelength: float
    phase: float

    def f(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.wavelength
        return self.amplitude * (np.sin(k * x + self.phase) - np.sin(self.phase))

    def slope(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.wavelength
        return self.amplitude * k * np.cos(k * x + self.phase)

    def place(self, x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (X, Y, heading) of street coordinates (x, d)."""
        x = np.asarray(x, dtype=np.float64)
        s = self.slope(x)
        return x, self.f(x) + np.asarray(d) * np.sqrt(1.0 + s * s), np.arctan(s)

    def lateral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Street coordinate d of world points (inverse of `place` for a given x)."""
        s = self.slope(x)
        return (y - self.f(x)) / np.sqrt(1.0 + s * s)


def ground_class(street: Street, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw semantic id and base remission of the ground at world (x, y)."""
    d = street.lateral(x, y)
    ad = np.abs(d)
    sem = np.select(
        [ad < ROAD_HALF, ad < PARKING_OUT, ad < SIDEWALK_OUT],
        [ROAD, PARKING, SIDEWALK],
        TERRAIN,
    ).astype(np.uint32)
    # lane markings: solid centre line and road edges, dashed lane dividers (3 m of every 9 m)
    centre = np.abs(d) < 0.08
    edge = np.abs(ad - (ROAD_HALF - 0.15)) < 0.08
    dashed = (np.abs(ad - 3.5) < 0.07) & ((x % 9.0) < 3.0)
    sem[centre | edge | dashed] = LANE_MARKING
    base = np.select(
        [sem == ROAD, sem == PARKING, sem == SIDEWALK, sem == LANE_MARKING],
        [0.12, 0.16, 0.26, 0.72],
        0.34,
    ).astype(np.float32)
    return sem, base


# ---- object templates (actor frame: x forward, y left, z up, origin on the ground) ---------
# (kind, cx, cy, cz, half_a, half_b, half_c)
Part = tuple[int, float, float, float, float, float, float]


def _person(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(1.6, 1.9)
    r = rng.uniform(0.2, 0.25)
    body = h - 0.24
    return [
        (CYLINDER, 0.0, 0.0, body / 2, r, r, body / 2),
        (ELLIPSOID, 0.0, 0.0, h - 0.12, 0.11, 0.11, 0.12),
        # shoulders: a flat box makes the silhouette ~0.5-0.6 m wide
        (BOX, 0.0, 0.0, body - 0.2, 0.13, r + 0.07, 0.18),
    ]


def _bicycle() -> list[Part]:
    return [
        (BOX, 0.53, 0.0, 0.34, 0.34, 0.025, 0.34),
        (BOX, -0.53, 0.0, 0.34, 0.34, 0.025, 0.34),
        (BOX, 0.0, 0.0, 0.62, 0.45, 0.03, 0.17),
        (BOX, 0.45, 0.0, 0.98, 0.04, 0.3, 0.03),
        (BOX, -0.27, 0.0, 0.9, 0.13, 0.08, 0.04),
    ]


def _motorcycle() -> list[Part]:
    return [
        (BOX, 0.72, 0.0, 0.32, 0.32, 0.06, 0.32),
        (BOX, -0.72, 0.0, 0.32, 0.32, 0.06, 0.32),
        (BOX, 0.0, 0.0, 0.6, 0.75, 0.24, 0.3),
        (BOX, 0.55, 0.0, 1.05, 0.05, 0.38, 0.04),
    ]


def _rider(x: float, z0: float, helmet: float) -> list[Part]:
    return [
        (BOX, x + 0.1, 0.0, z0 - 0.25, 0.2, 0.17, 0.3),  # legs
        (CYLINDER, x, 0.0, z0 + 0.3, 0.2, 0.2, 0.3),  # torso
        (ELLIPSOID, x + 0.05, 0.0, z0 + 0.6 + helmet, helmet, helmet, helmet * 1.1),
    ]


def _car(rng: np.random.Generator) -> list[Part]:
    s = rng.uniform(0.92, 1.1)
    return [
        (BOX, 0.0, 0.0, 0.65, 2.1 * s, 0.88, 0.45),
        (BOX, -0.25 * s, 0.0, 1.33, 1.15 * s, 0.8, 0.23 + 0.05 * s),
    ]


def _truck(rng: np.random.Generator) -> list[Part]:
    s = rng.uniform(0.9, 1.1)
    return [
        (BOX, 3.1 * s, 0.0, 1.6, 1.0, 1.25, 1.2),
        (BOX, -1.0 * s, 0.0, 2.0, 3.1 * s, 1.25, 1.5),
        (BOX, 0.0, 0.0, 0.45, 4.0 * s, 1.05, 0.3),
    ]


def _other_vehicle(rng: np.random.Generator) -> list[Part]:
    length = rng.uniform(5.0, 7.0)
    height = rng.uniform(2.3, 3.0)
    return [
        (BOX, 0.0, 0.0, 0.3 + height / 2, length / 2, 1.15, height / 2),
        (BOX, 0.0, 0.0, 0.25, length / 2 - 0.6, 1.0, 0.2),
    ]


def template(kind: int, rng: np.random.Generator) -> tuple[list[Part], float]:
    """Parts of a thing class (static raw id) and its length along x."""
    if kind == PERSON:
        return _person(rng), 0.6
    if kind == BICYCLE:
        return _bicycle(), 1.8
    if kind == BICYCLIST:
        return _bicycle() + _rider(-0.2, 0.95, 0.12), 1.8
    if kind == MOTORCYCLE:
        return _motorcycle(), 2.2
    if kind == MOTORCYCLIST:
        return _motorcycle() + _rider(-0.2, 0.85, 0.15), 2.2
    if kind == CAR:
        parts = _car(rng)
        return parts, 2 * parts[0][4]
    if kind == TRUCK:
        parts = _truck(rng)
        return parts, 2 * parts[2][4] + 0.4
    if kind == OTHER_VEHICLE:
        parts = _other_vehicle(rng)
        return parts, 2 * parts[0][4]
    raise ValueError(f"no template for raw id {kind}")


_REFL_RANGE = {
    CAR: (0.05, 0.6),
    TRUCK: (0.2, 0.6),
    OTHER_VEHICLE: (0.2, 0.55),
    PERSON: (0.15, 0.5),
    BICYCLE: (0.2, 0.4),
    BICYCLIST: (0.15, 0.45),
    MOTORCYCLE: (0.2, 0.5),
    MOTORCYCLIST: (0.15, 0.5),
}


# ---- world containers -------------------------------------------------------------------
@dataclass
class _Builder:
    """Accumulates primitives; parts are given in an object frame placed at (X, Y, Z0, heading)."""

    kind: list[int] = field(default_factory=list)
    center: list[tuple[float, float, float]] = field(default_factory=list)
    half: list[tuple[float, float, float]] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)
    sem: list[int] = field(default_factory=list)
    inst: list[int] = field(default_factory=list)
    refl: list[float] = field(default_factory=list)
    actor: list[int] = field(default_factory=list)

    def add(
        self,
        parts: list[Part],
        X: float,
        Y: float,
        Z0: float,
        heading: float,
        sem: int,
        inst: int,
        refl: float,
        actor: int = -1,
    ) -> None:
        c, s = np.cos(heading), np.sin(heading)
        for kind, px, py, pz, a, b, hc in parts:
            self.kind.append(kind)
            self.center.append((X + c * px - s * py, Y + s * px + c * py, Z0 + pz))
            self.half.append((a, b, hc))
            self.yaw.append(heading)
            self.sem.append(sem)
            self.inst.append(inst)
            self.refl.append(refl)
            self.actor.append(actor)

    def build(self) -> Prims:
        if not self.kind:
            return Prims.empty()
        return Prims(
            kind=np.asarray(self.kind, np.int8),
            center=np.asarray(self.center, np.float64),
            half=np.asarray(self.half, np.float64),
            yaw=np.asarray(self.yaw, np.float64),
            sem=np.asarray(self.sem, np.uint32),
            inst=np.asarray(self.inst, np.uint32),
            refl=np.asarray(self.refl, np.float32),
        )


def _poses_z(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(N,4,4) rigid transforms: rotation `heading` about z, then translation (X, Y, Z)."""
    n = np.broadcast(*(np.atleast_1d(v) for v in (X, Y, Z, heading))).shape[0]
    out = np.tile(np.eye(4), (n, 1, 1))
    c, s = np.cos(heading), np.sin(heading)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 0, 3], out[:, 1, 3], out[:, 2, 3] = X, Y, Z
    return out


@dataclass(frozen=True)
class Actors:
    """Moving things: parts in actor frames (posed at the origin), moved along the street."""

    parts: Prims  # centres/yaw relative to the actor origin, heading 0
    actor: np.ndarray  # (M,) actor index of each part
    x_ref: np.ndarray  # (A,) street x at time t_ref
    d: np.ndarray  # (A,) street lateral coordinate
    speed: np.ndarray  # (A,) signed speed along x (m/s)
    base_z: np.ndarray  # (A,) ground height under the actor
    t_ref: float

    def placement(self, street: Street, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (X, Y, heading) of every actor's origin at time `t` (heading includes the turn
        of actors driving towards -x)."""
        X, Y, heading = street.place(self.x_ref + self.speed * (t - self.t_ref), self.d)
        return X, Y, heading + np.where(self.speed < 0, np.pi, 0.0)

    @property
    def instance(self) -> np.ndarray:
        """(A,) instance id of every actor."""
        inst = np.zeros(self.x_ref.shape[0], dtype=np.int64)
        inst[self.actor] = self.parts.inst
        return inst

    def poses(self, street: Street, t: float) -> np.ndarray:
        """(A,4,4) world_from_actor at time `t`: the frame the actor's parts are defined in."""
        X, Y, heading = self.placement(street, t)
        return _poses_z(X, Y, self.base_z, heading)

    def at(self, street: Street, t: float) -> Prims:
        if not len(self.parts):
            return Prims.empty()
        X, Y, heading = self.placement(street, t)
        a = self.actor
        c, s = np.cos(heading)[a], np.sin(heading)[a]
        p = self.parts.center
        center = np.stack(
            [X[a] + c * p[:, 0] - s * p[:, 1], Y[a] + s * p[:, 0] + c * p[:, 1], self.base_z[a] + p[:, 2]], axis=1
        )
        q = self.parts
        return Prims(q.kind, center, q.half, q.yaw + heading[a], q.sem, q.inst, q.refl)


@dataclass(frozen=True)
class World:
    """One sequence: street, static scenery, actors, ego poses and calibration."""

    sequence: str
    street: Street
    static: Prims
    actors: Actors
    times: np.ndarray  # (F,) seconds
    ego_world: np.ndarray  # (F,4,4) world_from_lidar
    tr: np.ndarray  # 4x4 LiDAR -> camera
    calib: dict[str, np.ndarray]
    instance_class: dict[int, int]  # instance id -> static raw id of its class
    static_ids: np.ndarray  # (K,) instance ids of the standing / parked things
    static_poses: np.ndarray  # (K,4,4) their world_from_object (the frame their parts are defined in)

    def instance_poses(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of every thing instance in scan `frame`: ids (ascending) and
        ``lidar_from_object`` (K,4,4), the object frame expressed in that scan's LiDAR frame
        (a point ``p`` of the object at time t is ``lidar_from_object @ p`` in the scan)."""
        moving = self.actors.poses(self.street, float(self.times[frame]))
        ids = np.concatenate([self.static_ids, self.actors.instance])
        world = np.concatenate([self.static_poses, moving])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.linalg.inv(self.ego_world[frame]) @ world[order]

    @property
    def poses_lidar(self) -> np.ndarray:
        """LiDAR-frame poses relative to the first scan (what `Sequence.poses` must return)."""
        return np.linalg.inv(self.ego_world[0]) @ self.ego_world

    @property
    def poses_camera(self) -> np.ndarray:
        """KITTI `poses.txt` convention: Tr @ P_lidar @ inv(Tr)."""
        return self.tr @ self.poses_lidar @ np.linalg.inv(self.tr)


def sequence_rng(seed: int, sequence: str, *stream: int) -> np.random.Generator:
    """Independent stream per (seed, sequence, purpose...): a sequence never depends on which
    other sequences are generated with it."""
    return np.random.default_rng(np.random.SeedSequence([seed, int(sequence), *stream]))


def _rot(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def kitti_calibration(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """KITTI-like `Tr` (LiDAR x fwd/y left/z up -> camera x right/y down/z fwd, slightly off-axis,
    ~0.3 m behind the camera) and rectified projection matrices P0..P3."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    small = _rot(*np.deg2rad(rng.uniform(-0.5, 0.5, size=3)))
    tr = np.eye(4)
    tr[:3, :3] = axes @ small
    tr[:3, 3] = [rng.uniform(-0.02, 0.0), rng.uniform(-0.08, -0.05), rng.uniform(-0.33, -0.27)]
    f, cx, cy = 718.86, 607.19, 185.22
    calib: dict[str, np.ndarray] = {}
    for name, tx, ty in (("P0", 0.0, 0.0), ("P1", -386.14, 0.0), ("P2", 45.38, -0.11), ("P3", -337.28, 2.37)):
        p = np.eye(4)
        p[:3, :] = [[f, 0.0, cx, tx], [0.0, f, cy, ty], [0.0, 0.0, 1.0, 0.0 if name in ("P0", "P1") else 0.0045]]
        calib[name] = p
    calib["Tr"] = tr
    return tr, calib


# ---- scenery -----------------------------------------------------------------------------
def _walk(rng: np.random.Generator, x_lo: float, x_hi: float, gap: tuple[float, float]) -> list[float]:
    xs, x = [], x_lo + rng.uniform(0.0, gap[1])
    while x < x_hi:
        xs.append(x)
        x += rng.uniform(*gap)
    return xs


def _scenery(b: _Builder, rng: np.random.Generator, street: Street, x_lo: float, x_hi: float) -> None:
    def put(parts: list[Part], x: float, d: float, sem: int, refl: float) -> None:
        # scenery stands beyond the curb, aligned with the street
        X, Y, hd = street.place(x, d)
        b.add(parts, float(X), float(Y), CURB, float(hd), sem, 0, float(refl))

    for side in (-1.0, 1.0):
        # buildings, with fences or hedges in the gaps
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            length = rng.uniform(10.0, 32.0)
            depth = rng.uniform(8.0, 16.0)
            height = rng.uniform(5.0, 18.0)
            front = rng.uniform(16.0, 19.0)
            xc, dc = x + length / 2, side * (front + depth / 2)
            refl = rng.uniform(0.15, 0.45)
            put([(BOX, 0.0, 0.0, height / 2, length / 2, depth / 2, height / 2)], xc, dc, BUILDING, refl)
            if height > 9 and rng.random() < 0.4:  # setback storey
                h2 = rng.uniform(2.5, 5.0)
                top = (BOX, 0.0, side * 1.5, height + h2 / 2, length / 2 - 1.5, depth / 2 - 1.5, h2 / 2)
                put([top], xc, dc, BUILDING, refl)
            x += length
            gap = rng.uniform(3.0, 14.0)
            gx = x + gap / 2
            u = rng.random()
            if u < 0.55:
                fh = rng.uniform(1.0, 2.0)
                put([(BOX, 0.0, 0.0, fh / 2, gap / 2, 0.03, fh / 2)], gx, side * 16.2, FENCE, rng.uniform(0.2, 0.5))
            elif u < 0.85:
                hh = rng.uniform(0.8, 1.8)
                put([(BOX, 0.0, 0.0, hh / 2, gap / 2 - 0.3, 0.5, hh / 2)], gx, side * 16.2, VEGETATION, 0.45)
            x += gap
        # terrain strip: trees, street lamps, traffic signs, bushes
        for xs in _walk(rng, x_lo, x_hi, (6.0, 13.0)):
            u = rng.random()
            if u < 0.5:
                d = side * rng.uniform(13.6, 14.4)
                ht, rt = rng.uniform(1.8, 3.5), rng.uniform(0.12, 0.25)
                rh, rz = rng.uniform(1.4, 2.8), rng.uniform(1.3, 2.6)
                # the trunk reaches into the crown so no gap shows between them
                put([(CYLINDER, 0.0, 0.0, ht / 2 + 0.3, rt, rt, ht / 2 + 0.3)], xs, d, TRUNK, rng.uniform(0.25, 0.4))
                put([(ELLIPSOID, 0.0, 0.0, ht + rz * 0.7, rh, rh, rz)], xs, d, VEGETATION, rng.uniform(0.35, 0.55))
            elif u < 0.72:
                hp = rng.uniform(6.0, 9.0)
                put([(CYLINDER, 0.0, 0.0, hp / 2, 0.1, 0.1, hp / 2)], xs, side * 12.9, POLE, 0.35)
                # lamp arm reaching over the road
                put([(BOX, 0.0, -side * 0.9, hp - 0.1, 0.05, 0.9, 0.05)], xs, side * 12.9, POLE, 0.35)
            elif u < 0.88:
                hp = rng.uniform(2.3, 3.0)
                put([(CYLINDER, 0.0, 0.0, hp / 2, 0.045, 0.045, hp / 2)], xs, side * 12.8, POLE, 0.35)
                # the plate faces the traffic: thin along the street
                put([(BOX, 0.0, 0.0, hp + 0.3, 0.02, 0.33, 0.33)], xs, side * 12.8, TRAFFIC_SIGN, 0.9)
            else:
                rb = rng.uniform(0.5, 1.1)
                put([(ELLIPSOID, 0.0, 0.0, rb * 0.6, rb, rb, rb * 0.8)], xs, side * 14.0, VEGETATION, 0.45)


# ---- things -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Lane:
    d: float
    speed: float  # signed, shared by the lane so its actors never run into each other
    z: float
    kinds: tuple[tuple[int, float], ...]  # (raw id, probability); the rest stays empty
    gap: tuple[float, float]


def _fill(
    rng: np.random.Generator, lane: _Lane, x_lo: float, x_hi: float, forced: list[tuple[int, float]]
) -> list[tuple[int, float, list[Part]]]:
    """Place objects along a lane without overlaps; `forced` (raw id, x) are placed first."""
    items: list[tuple[int, float, list[Part]]] = []
    taken: list[tuple[float, float]] = []
    for kind, x in forced:
        parts, length = template(kind, rng)
        if all(x + length / 2 + 1.0 < a or x - length / 2 - 1.0 > b for a, b in taken):
            items.append((kind, x, parts))
            taken.append((x - length / 2, x + length / 2))
    kinds = [k for k, _ in lane.kinds]
    probs = np.array([p for _, p in lane.kinds] + [max(0.0, 1.0 - sum(p for _, p in lane.kinds))])
    x = x_lo + rng.uniform(0.0, lane.gap[1])
    while x < x_hi:
        choice = int(rng.choice(len(probs), p=probs / probs.sum()))
        if choice < len(kinds):
            kind = kinds[choice]
            parts, length = template(kind, rng)
            lo, hi = x, x + length
            if all(hi + 1.0 < a or lo - 1.0 > b for a, b in taken):
                items.append((kind, x + length / 2, parts))
                taken.append((lo, hi))
            x = hi
        x += rng.uniform(*lane.gap)
    return items


def _things(
    rng: np.random.Generator, street: Street, x_lo: float, x_hi: float, ego_mid: float, t_mid: float, duration: float
) -> tuple[Prims, Actors, dict[int, int], np.ndarray, np.ndarray]:
    veh = ((CAR, 0.4), (TRUCK, 0.05), (OTHER_VEHICLE, 0.05), (MOTORCYCLIST, 0.06))
    v_same, v_opp = rng.uniform(9.0, 13.0), rng.uniform(8.0, 13.0)
    moving = [
        _Lane(-5.25, v_same, 0.0, veh, (12.0, 50.0)),
        _Lane(1.75, -v_opp, 0.0, veh, (12.0, 50.0)),
        _Lane(5.25, -rng.uniform(8.0, 12.0), 0.0, veh, (15.0, 60.0)),
        _Lane(-6.4, rng.uniform(3.5, 6.0), 0.0, ((BICYCLIST, 0.5),), (8.0, 60.0)),
        _Lane(6.4, -rng.uniform(3.5, 6.0), 0.0, ((BICYCLIST, 0.5),), (8.0, 60.0)),
    ]
    for side in (-1.0, 1.0):  # pedestrians: two walking lanes per sidewalk, opposite directions
        moving.append(_Lane(side * 10.3, rng.uniform(1.1, 1.6), CURB, ((PERSON, 0.7),), (2.0, 18.0)))
        moving.append(_Lane(side * 11.3, -rng.uniform(1.0, 1.5), CURB, ((PERSON, 0.7),), (2.0, 18.0)))
    parked = [
        _Lane(
            side * 8.25,
            0.0,
            0.0,
            ((CAR, 0.45), (TRUCK, 0.03), (OTHER_VEHICLE, 0.04), (MOTORCYCLE, 0.06), (MOTORCYCLIST, 0.02)),
            (1.5, 10.0),
        )
        for side in (-1.0, 1.0)
    ] + [
        _Lane(side * 12.05, 0.0, CURB, ((PERSON, 0.35), (BICYCLE, 0.4), (BICYCLIST, 0.1)), (3.0, 16.0))
        for side in (-1.0, 1.0)
    ]
    # Guarantee that every hard class shows up near the ego in the middle of the sequence, so even
    # short sequences contain all of them (positions are at time t_mid).
    def near() -> float:
        return ego_mid + float(rng.uniform(-40.0, 40.0))

    forced_moving: dict[int, list[tuple[int, float]]] = {i: [] for i in range(len(moving))}
    for kind in (TRUCK, OTHER_VEHICLE, MOTORCYCLIST, CAR):
        forced_moving[int(rng.integers(0, 3))].append((kind, near()))
    forced_moving[int(rng.integers(3, 5))].append((BICYCLIST, near()))
    for _ in range(3):
        forced_moving[int(rng.integers(5, 9))].append((PERSON, near()))
    forced_parked: dict[int, list[tuple[int, float]]] = {i: [] for i in range(len(parked))}
    for kind in (TRUCK, OTHER_VEHICLE, MOTORCYCLE, MOTORCYCLIST):
        forced_parked[int(rng.integers(0, 2))].append((kind, near()))
    for kind in (PERSON, BICYCLE, BICYCLIST):
        forced_parked[int(rng.integers(2, 4))].append((kind, near()))

    instance_class: dict[int, int] = {}
    static_pose: dict[int, tuple[float, float, float, float]] = {}  # inst -> X, Y, Z, heading
    static = _Builder()
    dyn = _Builder()
    x_ref, d_ref, speed, base_z = [], [], [], []
    for lane_set, forced_map, is_moving in ((moving, forced_moving, True), (parked, forced_parked, False)):
        for li, lane in enumerate(lane_set):
            reach = abs(lane.speed) * (duration / 2 + 1.0)
            for kind, x, parts in _fill(rng, lane, x_lo - reach, x_hi + reach, forced_map[li]):
                inst = len(instance_class) + 1
                instance_class[inst] = kind
                sem = MOVING[kind] if is_moving else kind
                refl = rng.uniform(*_REFL_RANGE[kind])
                if is_moving:
                    dyn.add(parts, 0.0, 0.0, 0.0, 0.0, sem, inst, refl, actor=len(x_ref))
                    x_ref.append(x)
                    d_ref.append(lane.d)
                    speed.append(lane.speed)
                    base_z.append(lane.z)
                else:
                    X, Y, hd = street.place(x, lane.d)
                    # parked two-wheelers stand at an angle, some vehicles face the other way
                    skew = 0.4 if kind in (BICYCLE, MOTORCYCLE) else 0.05
                    turn = rng.choice([0.0, np.pi]) + rng.uniform(-skew, skew)
                    static.add(parts, float(X), float(Y), lane.z, float(hd) + float(turn), sem, inst, refl)
                    static_pose[inst] = (float(X), float(Y), lane.z, float(hd) + float(turn))
    actors = Actors(
        parts=dyn.build(),
        actor=np.asarray(dyn.actor, dtype=np.int64),
        x_ref=np.asarray(x_ref, dtype=np.float64),
        d=np.asarray(d_ref, dtype=np.float64),
        speed=np.asarray(speed, dtype=np.float64),
        base_z=np.asarray(base_z, dtype=np.float64),
        t_ref=t_mid,
    )
    ids = np.asarray(sorted(static_pose), dtype=np.int64)
    xyzh = np.asarray([static_pose[i] for i in ids.tolist()], dtype=np.float64).reshape(-1, 4)
    poses = _poses_z(xyzh[:, 0], xyzh[:, 1], xyzh[:, 2], xyzh[:, 3]) if len(ids) else np.zeros((0, 4, 4))
    return static.build(), actors, instance_class, ids, poses


def build_world(cfg: SynthConfig, sequence: str) -> World:
    """Deterministic world of one sequence (depends only on `cfg` and the sequence id)."""
    rng = sequence_rng(cfg.seed, sequence, 0)
    street = Street(
        amplitude=rng.uniform(6.0, 20.0), wavelength=rng.uniform(500.0, 900.0), phase=rng.uniform(0, 2 * np.pi)
    )
    n = cfg.scans
    times = np.arange(n, dtype=np.float64) / cfg.rate_hz
    # ego speed varies smoothly around v0 (acceleration / braking)
    v0 = rng.uniform(*cfg.ego_speed)
    amp = min(0.8, 0.5 * (cfg.ego_speed[1] - cfg.ego_speed[0]) + 0.3)
    period = rng.uniform(15.0, 30.0)
    x_ego = v0 * times + amp * period / (2 * np.pi) * (1.0 - np.cos(2 * np.pi * times / period))
    X, Y, heading = street.place(x_ego, np.full(n, EGO_D))
    ego = np.tile(np.eye(4), (n, 1, 1))
    c, s = np.cos(heading), np.sin(heading)
    ego[:, 0, 0], ego[:, 0, 1], ego[:, 1, 0], ego[:, 1, 1] = c, -s, s, c
    ego[:, 0, 3], ego[:, 1, 3], ego[:, 2, 3] = X, Y, cfg.sensor_height
    tr, calib = kitti_calibration(rng)

    x_lo, x_hi = float(x_ego[0]) - MARGIN, float(x_ego[-1]) + MARGIN
    scenery = _Builder()
    _scenery(scenery, rng, street, x_lo, x_hi)
    mid = n // 2
    things, actors, instance_class, static_ids, static_poses = _things(
        rng, street, x_lo, x_hi, float(x_ego[mid]), float(times[mid]), float(times[-1])
    )
    if len(instance_class) > 0xFFFF:
        raise ConfigError(
            f"sequence {sequence}: {len(instance_class)} instances do not fit the 16-bit instance id; use fewer scans"
        )
    return World(
        sequence=sequence,
        street=street,
        static=Prims.concat([scenery.build(), things]),
        actors=actors,
        times=times,
        ego_world=ego,
        tr=tr,
        calib=calib,
        instance_class=instance_class,
        static_ids=static_ids,
        static_poses=static_poses,
    )
