"""Assembling primitives: a builder for posed parts, rigid poses and the moving actors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2s.synth.geometry import Prims
from m2s.synth.layout import Street
from m2s.synth.shapes import Part


@dataclass
class Builder:
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


def poses_z(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(N,4,4) rigid transforms: rotation `heading` about z, then translation (X, Y, Z)."""
    n = np.broadcast(*(np.atleast_1d(v) for v in (X, Y, Z, heading))).shape[0]
    out = np.tile(np.eye(4), (n, 1, 1))
    c, s = np.cos(heading), np.sin(heading)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 0, 3], out[:, 1, 3], out[:, 2, 3] = X, Y, Z
    return out


@dataclass(frozen=True)
class Actors:
    """Moving things: parts in actor frames (posed at the origin), moved in street coordinates.

    An actor moves along the street at `speed` and across it at `d_speed`, its lateral position
    held within [d_lo, d_hi] (a pedestrian who has crossed stops at the far kerb); its heading is
    the street's plus `yaw_offset` (pi for traffic towards -x, +-pi/2 for crossing)."""

    parts: Prims  # centres/yaw relative to the actor origin, heading 0
    actor: np.ndarray  # (M,) actor index of each part
    x_ref: np.ndarray  # (A,) street x at time t_ref
    d: np.ndarray  # (A,) street lateral coordinate at time t_ref
    speed: np.ndarray  # (A,) signed speed along x (m/s)
    base_z: np.ndarray  # (A,) ground height under the actor
    t_ref: float
    d_speed: np.ndarray  # (A,) signed speed across the street (m/s)
    d_lo: np.ndarray  # (A,)
    d_hi: np.ndarray  # (A,)
    yaw_offset: np.ndarray  # (A,)

    def placement(self, street: Street, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (X, Y, heading) of every actor's origin at time `t`."""
        dt = t - self.t_ref
        d = np.clip(self.d + self.d_speed * dt, self.d_lo, self.d_hi)
        X, Y, heading = street.place(self.x_ref + self.speed * dt, d)
        return X, Y, heading + self.yaw_offset

    @property
    def instance(self) -> np.ndarray:
        """(A,) instance id of every actor."""
        inst = np.zeros(self.x_ref.shape[0], dtype=np.int64)
        inst[self.actor] = self.parts.inst
        return inst

    def poses(self, street: Street, t: float) -> np.ndarray:
        """(A,4,4) world_from_actor at time `t`: the frame the actor's parts are defined in."""
        X, Y, heading = self.placement(street, t)
        return poses_z(X, Y, self.base_z, heading)

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
