"""Street layouts: the centre line, a cross-section drawn per sequence, cross streets and the ground.

World frame: z up, the road surface at z = 0. The street centre line is ``y = f(x)``, a gentle
sinusoid; the lateral street coordinate ``d`` (positive to the left of +x) places everything
across the street. Side 0 is ``d < 0`` (the ego's side, traffic towards +x), side 1 is ``d > 0``.

From the centre outwards, per side (widths drawn per sequence, see :func:`draw_layout`)::

    median (4-lane roads only) | road lanes | parking band (or none) | verge (or none) | sidewalk | property

Road and parking lie at road level; everything else is raised by a curb (German urban curbs are
10-15 cm). Cross streets cut through everything beyond the road at road level. The property zone
is lawn (terrain) in front of houses, or paved yards (other-ground) along some stretches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.synth.ids import LANE_MARKING, OTHER_GROUND, PARKING, ROAD, SIDEWALK, TERRAIN

CURB = 0.12  # curb height (m)
_BASE_REMISSION = {ROAD: 0.12, PARKING: 0.16, SIDEWALK: 0.26, LANE_MARKING: 0.72, TERRAIN: 0.34, OTHER_GROUND: 0.2}


@dataclass(frozen=True)
class Street:
    """The centre line ``y = f(x)`` and the street coordinates (x, d) around it."""

    amplitude: float
    wavelength: float
    phase: float

    def f(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.wavelength
        return self.amplitude * (np.sin(k * x + self.phase) - np.sin(self.phase))

    def slope(self, x: np.ndarray) -> np.ndarray:
        k = 2.0 * np.pi / self.wavelength
        return self.amplitude * k * np.cos(k * x + self.phase)

    def place(self, x: np.ndarray | float, d: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (X, Y, heading) of street coordinates (x, d)."""
        x = np.asarray(x, dtype=np.float64)
        s = self.slope(x)
        return x, self.f(x) + np.asarray(d) * np.sqrt(1.0 + s * s), np.arctan(s)

    def lateral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Street coordinate d of world points (inverse of `place` for a given x)."""
        s = self.slope(x)
        return (y - self.f(x)) / np.sqrt(1.0 + s * s)


@dataclass(frozen=True)
class Layout:
    """The cross-section of one sequence's street and where cross streets and paved yards are.

    Per-side arrays have shape (2,): index 0 is the ego's side (d < 0), 1 the other side.
    """

    median: float  # half width of the central island (0: none)
    lanes: int  # lanes per direction
    lane_width: float
    parking: np.ndarray  # (2,) width of the parking band, 0 where cars park on the road edge or not at all
    verge: np.ndarray  # (2,) width of the grass verge between kerb and sidewalk (0: none)
    sidewalk: np.ndarray  # (2,) sidewalk width
    junction_x: np.ndarray  # (J,) street x of cross-street centres, ascending
    junction_half: np.ndarray  # (J,) half width of each cross street
    paved_edges: tuple[np.ndarray, np.ndarray]  # per side: ascending x where the property ground switches
    median_paved: bool  # central island paved (other-ground) or grass (terrain)

    @property
    def road_half(self) -> float:
        return self.median + self.lanes * self.lane_width

    @property
    def parking_out(self) -> np.ndarray:
        return self.road_half + self.parking

    @property
    def sidewalk_in(self) -> np.ndarray:
        return self.parking_out + self.verge

    @property
    def property_in(self) -> np.ndarray:
        return self.sidewalk_in + self.sidewalk

    def ego_lane_d(self, lane: int) -> float:
        """d of the centre of lane `lane` on the ego's side (0: the lane next to the centre line)."""
        return -(self.median + (lane + 0.5) * self.lane_width)

    def in_junction(self, x: np.ndarray, pad: float = 0.0) -> np.ndarray:
        """Whether street x lies within a cross street (widened by `pad` on both sides)."""
        x = np.asarray(x, dtype=np.float64)
        if not self.junction_x.size:
            return np.zeros(x.shape, dtype=bool)
        i = np.clip(np.searchsorted(self.junction_x, x), 1, self.junction_x.size) - 1
        near = np.stack([i, np.minimum(i + 1, self.junction_x.size - 1)])
        gap = np.abs(x[None] - self.junction_x[near]) - self.junction_half[near]
        return (gap < pad).any(axis=0)


def draw_layout(rng: np.random.Generator, x_lo: float, x_hi: float) -> Layout:
    """A residential or urban street as found in the KITTI recordings around Karlsruhe.

    Facts behind the ranges: German urban lanes are 2.75-3.5 m wide (RASt 06); most residential
    streets have one lane per direction, arterials two, often with a central island; parallel
    parking bands are 2.0-2.5 m; sidewalks 1.5-4 m; grass verges with trees are common; cross
    streets every 60-250 m in a town.
    """
    lanes = 1 if rng.random() < 0.7 else 2
    median = float(rng.uniform(0.8, 2.5)) if lanes == 2 and rng.random() < 0.5 else 0.0
    parking = np.where(rng.random(2) < 0.35, rng.uniform(2.0, 2.5, 2), 0.0)
    verge = np.where(rng.random(2) < 0.4, rng.uniform(1.0, 3.5, 2), 0.0)
    xs, halves = [], []
    x = x_lo + float(rng.uniform(10.0, 150.0))
    while x < x_hi:
        xs.append(x)
        halves.append(float(rng.uniform(3.0, 5.0)))
        x += float(rng.uniform(60.0, 250.0))
    edges = []
    for _ in range(2):
        e: list[float] = []
        x = x_lo
        while x < x_hi:  # lawn stretches with shorter paved yards and driveways between them
            x += float(rng.uniform(20.0, 90.0)) if len(e) % 2 == 0 else float(rng.uniform(3.0, 8.0))
            e.append(x)
        edges.append(np.asarray(e, dtype=np.float64))
    return Layout(
        median=median,
        lanes=lanes,
        lane_width=float(rng.uniform(2.9, 3.5)),
        parking=parking,
        verge=verge,
        sidewalk=rng.uniform(1.5, 4.0, 2),
        junction_x=np.asarray(xs, dtype=np.float64),
        junction_half=np.asarray(halves, dtype=np.float64),
        paved_edges=(edges[0], edges[1]),
        median_paved=bool(rng.random() < 0.3),
    )


def ground_class(
    street: Street, layout: Layout, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw semantic id, base remission and whether the ground is raised (curb level) at world (x, y)."""
    d = street.lateral(x, y)
    ad = np.abs(d)
    side = (d > 0).astype(np.int64)
    in_median = ad < layout.median
    on_road = ~in_median & (ad < layout.road_half)
    junction = layout.in_junction(x) & (ad >= layout.road_half)
    parking = ~junction & (ad >= layout.road_half) & (ad < layout.parking_out[side])
    # the verge, between parking and sidewalk, keeps the default TERRAIN
    walk = ~junction & (ad >= layout.sidewalk_in[side]) & (ad < layout.property_in[side])
    prop = ~junction & (ad >= layout.property_in[side])
    paved = np.zeros(x.shape, dtype=bool)
    for s in (0, 1):
        sel = prop & (side == s)
        paved[sel] = np.searchsorted(layout.paved_edges[s], x[sel]) % 2 == 1
    sem = np.full(x.shape, TERRAIN, dtype=np.uint32)
    sem[on_road | junction] = ROAD
    sem[parking] = PARKING
    sem[walk] = SIDEWALK
    sem[prop & paved] = OTHER_GROUND
    sem[in_median] = OTHER_GROUND if layout.median_paved else TERRAIN
    # markings: centre line (or island edges), road edges, dashed lane dividers (3 m of every 9 m)
    rh = layout.road_half
    centre = (np.abs(ad - layout.median) < 0.08) & ((x % 6.0) < 3.0 if layout.median == 0 else True)
    edge = np.abs(ad - (rh - 0.15)) < 0.08
    divider = (layout.lanes == 2) & (np.abs(ad - layout.median - layout.lane_width) < 0.07) & ((x % 9.0) < 3.0)
    sem[(on_road & (centre | edge | divider))] = LANE_MARKING
    base = np.zeros(x.shape, dtype=np.float32)
    for raw, value in _BASE_REMISSION.items():
        base[sem == raw] = value
    raised = ~(on_road | junction | parking)
    return sem, base, raised
