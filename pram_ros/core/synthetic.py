"""A synthetic indoor place for the demo and the tests, rendered with exact ground truth.

Three rooms in an L, textured with the photographs that ship inside scikit-image (nothing is
downloaded). Some posters repeat across rooms, so appearance alone is ambiguous. A robot drives a
mapping route and a different query route (other path, other lighting, sensor noise, a region the
mapping route saw only from afar); each run becomes a contract bag with images, camera info,
ground-truth camera poses, drifting odometry on /tf and the camera extrinsic on /tf_static.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .bag import BagReader, BagWriter
from .camera import Camera
from .geometry import R_BASE_OPTICAL, invert, make_T

log = logging.getLogger(__name__)
TEXELS_PER_M = 160.0
WALL_H = 3.0


@dataclass
class Quad:
    """A textured rectangle o + a*u + b*v (a, b in [0, 1]) seen from the side its normal u x v points to."""

    o: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mips: list[np.ndarray]  # texture pyramid, level 0 first (BGR uint8)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)


@dataclass(frozen=True)
class Lighting:
    """Appearance of one run: global gain, colour cast, a directional shading term and noise."""

    gain: float = 1.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)  # B, G, R multipliers
    light_dir: tuple[float, float, float] = (0.3, 0.5, 1.0)
    ambient: float = 0.75
    noise_sigma: float = 0.0
    vignette: float = 0.0

    def shade(self, normal: np.ndarray) -> float:
        d = np.asarray(self.light_dir) / np.linalg.norm(self.light_dir)
        return self.ambient + (1 - self.ambient) * abs(float(normal @ d))


FLAT = Lighting(ambient=1.0)
MAP_LIGHT = Lighting()
QUERY_LIGHT = Lighting(gain=0.8, color=(1.1, 1.0, 0.88), light_dir=(-0.6, 0.2, 0.6), ambient=0.6,
                       noise_sigma=4.0, vignette=0.25)


PHOTO_FILES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "coins.png",
               "moon.png", "page.png", "text.png", "hubble_deep_field.jpg", "motorcycle_left.png",
               "ihc.png", "retina.jpg", "horse.png", "color.png", "logo.png", "cell.png",
               "clock_motion.png", "microaneurysms.png", "brick.png", "gravel.png", "grass.png"]


def _photos() -> dict[str, np.ndarray]:
    """BGR uint8 photographs read from the files inside the scikit-image wheel (never fetched)."""
    from importlib.resources import files

    root = files("skimage") / "data"
    out = {}
    for name in PHOTO_FILES:
        buf = np.frombuffer((root / name).read_bytes(), np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if img is None:
            raise RuntimeError(f"cannot decode scikit-image sample {name}")
        out[name.split(".")[0]] = img
    return out


def _tile(img: np.ndarray, h: int, w: int, scale: float, tint: tuple[float, float, float]) -> np.ndarray:
    t = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    reps = (h // t.shape[0] + 1, w // t.shape[1] + 1, 1)
    out = np.tile(t, reps)[:h, :w].astype(np.float32) * np.array(tint, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _mips(tex: np.ndarray, levels: int = 6) -> list[np.ndarray]:
    out = [tex]
    while len(out) < levels and min(out[-1].shape[:2]) > 8:
        out.append(cv2.pyrDown(out[-1]))
    return out


@dataclass
class Scene:
    quads: list[Quad] = field(default_factory=list)

    def add(self, o, u, v, tex: np.ndarray) -> None:
        self.quads.append(Quad(np.asarray(o, float), np.asarray(u, float), np.asarray(v, float), _mips(tex)))

    def raycast(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest hit of rays (N,3) from origin: distance (inf if none), quad index, texture (a, b)."""
        n = len(dirs)
        best = np.full(n, np.inf)
        idx = np.full(n, -1)
        ab = np.zeros((n, 2))
        for k, q in enumerate(self.quads):
            nrm = q.normal
            denom = dirs @ nrm
            s = ((q.o - origin) @ nrm) / np.where(np.abs(denom) < 1e-12, np.nan, denom)
            hit = origin + s[:, None] * dirs
            rel = hit - q.o
            a = rel @ q.u / (q.u @ q.u)
            b = rel @ q.v / (q.v @ q.v)
            ok = (denom < 0) & (s > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (s < best)
            best[ok], idx[ok], ab[ok] = s[ok], k, np.stack([a, b], 1)[ok]
        return best, idx, ab

    def albedo(self, idx: int, ab: np.ndarray) -> np.ndarray:
        """Level-0 texture colour (BGR float) at texture coordinates ab of one quad."""
        tex = self.quads[idx].mips[0]
        h, w = tex.shape[:2]
        x = (ab[:, 0] * w - 0.5).astype(np.float32)
        y = (ab[:, 1] * h - 0.5).astype(np.float32)
        return cv2.remap(tex, x[:, None], y[:, None], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3).astype(float)


BLOCK_Y = 12.0  # a larger site stacks blocks of three rooms along y, this far apart
MAX_VIEW_M = 25.0  # the renderer skips surfaces farther than this (a block is at most 20 m across)


def build_scene(seed: int = 0, blocks: int = 1) -> Scene:
    """Three rooms in an L: A x[0,8] y[0,6], B x[8,16] y[0,6], C x[8,16] y[6,12]; doors A-B and B-C.

    With `blocks` > 1, further such blocks follow along y (block k shifted by k * BLOCK_Y), each
    room C opening through a door at x [11, 12.5] into the next block's room B; later blocks
    differ in wall textures and in the order their posters hang (the first block is the demo's)."""
    rng = np.random.default_rng(seed)
    ph = _photos()
    # Posters: two different crops of each photograph, so most are unique; three are hung twice,
    # in different rooms, so that appearance alone is ambiguous (perceptual aliasing).
    posters = []
    for name in (n for n in ph if n not in ("brick", "gravel", "grass")):
        img = ph[name]
        h, w = img.shape[:2]
        posters += [img[: max(h * 2 // 3, 8), : max(w * 2 // 3, 8)], img[h // 3:, w // 3:]]
    order = rng.permutation(len(posters)).tolist()
    poster_cycle = [posters[i] for i in order]
    poster_cycle[-3:] = poster_cycle[:3]  # the deliberate repeats, far apart in the hanging order
    bases = [("brick", 0.8, (0.8, 0.85, 1.0)), ("gravel", 0.7, (0.9, 0.95, 0.9)),
             ("brick", 0.6, (1.0, 0.9, 0.75)), ("grass", 0.8, (0.85, 1.0, 0.9))]
    scene = Scene()
    pi = 0

    def wall(p0, p1, base: int) -> None:
        nonlocal pi
        p0, p1 = np.array([p0[0], p0[1] + y0_block, 0.0]), np.array([p1[0], p1[1] + y0_block, 0.0])
        base += block
        length = np.linalg.norm(p1 - p0)
        w, h = int(length * TEXELS_PER_M), int(WALL_H * TEXELS_PER_M)
        name, sc, tint = bases[base % len(bases)]
        tex = _tile(ph[name], h, w, sc, tint)
        # Low-frequency stains and small stickers break the base texture's periodicity, as
        # real walls have marks, switches and notices.
        stain = cv2.resize(rng.uniform(0.75, 1.2, (max(h // 80, 2), max(w // 80, 2))).astype(np.float32), (w, h),
                           interpolation=cv2.INTER_CUBIC)
        tex = np.clip(tex * stain[..., None], 0, 255).astype(np.uint8)
        for _ in range(int(length * 1.5)):
            sticker = posters[rng.integers(len(posters))]
            sw = int(rng.uniform(0.12, 0.3) * TEXELS_PER_M)
            sh = max(4, int(sw * sticker.shape[0] / sticker.shape[1]))
            x0, y0 = rng.integers(0, max(w - sw, 1)), rng.integers(int(0.1 * h), max(h - sh, int(0.1 * h) + 1))
            if y0 + sh <= h and x0 + sw <= w:
                tex[y0:y0 + sh, x0:x0 + sw] = cv2.resize(sticker, (sw, sh), interpolation=cv2.INTER_AREA)
        n_posters = max(1, int(length / 2.2))
        slots = np.linspace(0, w, n_posters + 1)
        for k in range(n_posters):
            img = poster_cycle[pi % len(poster_cycle)]
            pi += 1
            ph_h = int(rng.uniform(0.9, 1.4) * TEXELS_PER_M)
            ph_w = min(int(ph_h * img.shape[1] / img.shape[0]), int(slots[1] - slots[0]) - 20)
            ph_h = int(ph_w * img.shape[0] / img.shape[1])
            x0 = int(rng.uniform(slots[k] + 10, max(slots[k] + 11, slots[k + 1] - ph_w - 10)))
            y0 = int(rng.uniform(0.15, 0.45) * TEXELS_PER_M)
            tex[y0:y0 + ph_h, x0:x0 + ph_w] = cv2.resize(img, (ph_w, ph_h), interpolation=cv2.INTER_AREA)
            cv2.rectangle(tex, (x0 - 6, y0 - 6), (x0 + ph_w + 5, y0 + ph_h + 5), (30, 30, 30), 6)
        # v points down (texture rows) from the top edge; u along the wall; normal = u x v into the room.
        scene.add(p0 + [0, 0, WALL_H], p1 - p0, np.array([0, 0, -WALL_H]), tex)

    def floor_ceiling(x0, y0, x1, y1, k: int) -> None:
        y0, y1 = y0 + y0_block, y1 + y0_block
        w, h = int((x1 - x0) * TEXELS_PER_M / 2), int((y1 - y0) * TEXELS_PER_M / 2)
        floor = _tile(ph["gravel"], h, w, 0.5, (0.7, 0.75, 0.8 + 0.1 * k))
        scene.add([x0, y0, 0.0], [x1 - x0, 0, 0], [0, y1 - y0, 0], floor)
        ceil = _tile(ph["brick"], h, w, 0.4, (0.95, 0.95, 0.95))
        scene.add([x0, y0, WALL_H], [0, y1 - y0, 0], [x1 - x0, 0, 0], ceil)

    photos = [ph[n] for n in ph if n not in ("brick", "gravel", "grass")]
    for block in range(blocks):
        y0_block = block * BLOCK_Y
        if block:  # each further block hangs other crops of the photographs, in another order
            crops = []
            for img in photos:
                h, w = img.shape[:2]
                ch, cw = int(h * rng.uniform(0.45, 0.7)), int(w * rng.uniform(0.45, 0.7))
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                crops.append(img[y:y + ch, x:x + cw])
            poster_cycle = [crops[i] for i in rng.permutation(len(crops))]
        # Walls are listed counter-clockwise around each room so that u x v points inwards.
        # Room A
        wall((0, 0), (8, 0), 0)
        wall((8, 0), (8, 2.5), 0)
        wall((8, 4), (8, 6), 0)
        wall((8, 6), (0, 6), 0)
        wall((0, 6), (0, 0), 0)
        # Room B (a door to the previous block's room C in its south wall)
        if block == 0:
            wall((8, 0), (16, 0), 1)
        else:
            wall((8, 0), (11, 0), 1)
            wall((12.5, 0), (16, 0), 1)
        wall((16, 0), (16, 6), 1)
        wall((16, 6), (12.5, 6), 1)
        wall((11, 6), (8, 6), 1)
        wall((8, 6), (8, 4), 1)
        wall((8, 2.5), (8, 0), 1)
        # Room C (a door to the next block's room B in its north wall)
        wall((8, 6), (11, 6), 2)
        wall((12.5, 6), (16, 6), 2)
        wall((16, 6), (16, 12), 2)
        if block == blocks - 1:
            wall((16, 12), (8, 12), 3)
        else:
            wall((16, 12), (12.5, 12), 3)
            wall((11, 12), (8, 12), 3)
        wall((8, 12), (8, 6), 2)
        for k, (x0, y0, x1, y1) in enumerate([(0, 0, 8, 6), (8, 0, 16, 6), (8, 6, 16, 12)]):
            floor_ceiling(x0, y0, x1, y1, k)
    return scene


class Renderer:
    """Renders a Scene for one camera: per-quad homography warps, a z-buffer, then lens distortion."""

    def __init__(self, scene: Scene, camera: Camera, near: float = 0.05) -> None:
        self.scene, self.camera, self.near = scene, camera, near
        # Pinhole canvas with a margin large enough to cover the distorted image.
        uu, vv = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
        xy = camera.normalize(np.stack([uu.ravel(), vv.ravel()], 1))
        px = xy[:, 0] * camera.fx + camera.cx
        py = xy[:, 1] * camera.fy + camera.cy
        self.m = int(np.ceil(max(0.0, -px.min(), -py.min(), px.max() - camera.width, py.max() - camera.height))) + 2
        self.cw, self.ch = camera.width + 2 * self.m, camera.height + 2 * self.m
        self.Kc = camera.K.copy()
        self.Kc[0, 2] += self.m
        self.Kc[1, 2] += self.m
        self.map_x = (px + self.m).reshape(camera.height, camera.width).astype(np.float32)
        self.map_y = (py + self.m).reshape(camera.height, camera.width).astype(np.float32)
        cu, cv_ = np.meshgrid(np.arange(self.cw, dtype=np.float32), np.arange(self.ch, dtype=np.float32))
        self.rays = np.stack([(cu - self.Kc[0, 2]) / camera.fx, (cv_ - self.Kc[1, 2]) / camera.fy], -1)

    def render(self, T_world_camera: np.ndarray, lighting: Lighting = MAP_LIGHT,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """BGR uint8 image seen from T_world_camera (optical frame)."""
        T_cw = invert(T_world_camera)
        R, t = T_cw[:3, :3], T_cw[:3, 3]
        eye = T_world_camera[:3, 3]
        color = np.zeros((self.ch, self.cw, 3), np.float32)
        zbuf = np.full((self.ch, self.cw), np.inf, np.float32)
        for q in self.scene.quads:
            if (eye - q.o) @ q.normal <= 0:
                continue  # back face
            a, b = np.clip([(eye - q.o) @ q.u / (q.u @ q.u), (eye - q.o) @ q.v / (q.v @ q.v)], 0, 1)
            if np.linalg.norm(q.o + a * q.u + b * q.v - eye) > MAX_VIEW_M:
                continue  # beyond the next block: hidden behind walls, and costly to warp
            corners = np.array([q.o, q.o + q.u, q.o + q.u + q.v, q.o + q.v]) @ R.T + t
            poly = _clip_near(corners, self.near)
            if len(poly) < 3:
                continue
            pix = poly @ self.Kc.T
            pix = pix[:, :2] / pix[:, 2:]
            x0, y0 = np.floor(pix.min(0)).astype(int)
            x1, y1 = np.ceil(pix.max(0)).astype(int) + 1
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.cw), min(y1, self.ch)
            if x1 <= x0 or y1 <= y0:
                continue
            # Depth of the plane along each pixel's ray: z = d / (n . r).
            n_c = R @ q.normal
            d_c = n_c @ (R @ q.o + t)
            r = self.rays[y0:y1, x0:x1]
            z = d_c / (r[..., 0] * n_c[0] + r[..., 1] * n_c[1] + n_c[2])
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(mask, [np.round((pix - [x0, y0]) * 16).astype(np.int32)], 1, shift=4)
            vis = (mask > 0) & (z > 0) & (z < zbuf[y0:y1, x0:x1])
            if not vis.any():
                continue
            # Mip level from the texel footprint at the nearest visible depth.
            zmin = float(z[vis].min())
            footprint = max(zmin, 1e-3) * TEXELS_PER_M / self.camera.fx
            level = int(np.clip(np.floor(np.log2(max(footprint, 1.0)) + 0.5), 0, len(q.mips) - 1))
            tex = q.mips[level]
            th, tw = tex.shape[:2]
            # Texel (j, i) of this level has its centre at ((j + 0.5) / tw, (i + 0.5) / th) on the quad.
            H = self.Kc @ np.column_stack([R @ q.u / tw, R @ q.v / th,
                                           R @ (q.o + 0.5 * q.u / tw + 0.5 * q.v / th) + t])
            H = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ H
            warped = cv2.warpPerspective(tex, H, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
            shade = lighting.shade(q.normal)
            sub = color[y0:y1, x0:x1]
            sub[vis] = warped[vis].astype(np.float32) * shade
            zbuf[y0:y1, x0:x1][vis] = z[vis]
        img = cv2.remap(color, self.map_x, self.map_y, cv2.INTER_LINEAR)
        img *= np.array(lighting.color, np.float32) * lighting.gain
        if lighting.vignette:
            h, w = img.shape[:2]
            yy, xx = np.mgrid[0:h, 0:w]
            r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
            img *= (1 - lighting.vignette * r2)[..., None].astype(np.float32)
        if lighting.noise_sigma and rng is not None:
            img += rng.normal(0, lighting.noise_sigma, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon to z >= near."""
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            s = (near - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    return np.array(out)


DEMO_CAMERA = Camera(640, 480, 400.0, 400.0, 319.5, 239.5, "plumb_bob", (-0.05, 0.01, 0.0, 0.0, 0.0))
CAMERA_FRAME = "camera_optical_frame"


def _Rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _Rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# Camera 1.25 m above the floor, 0.15 m ahead of base_link, pitched 5 degrees down.
T_BASE_CAMERA = make_T(R_BASE_OPTICAL @ _Rx(np.radians(-5.0)), [0.15, 0.0, 1.25])


@dataclass(frozen=True)
class Run:
    """A drive through the scene: waypoints (x, y), speed, a sideways camera sweep, and lighting."""

    name: str
    waypoints: tuple[tuple[float, float], ...]
    speed: float = 0.5  # m/s
    sweep_deg: float = 30.0  # the robot's heading swings around the path direction
    sweep_period_m: float = 5.0
    sweep_phase: float = 0.0
    lighting: Lighting = MAP_LIGHT
    image_rate_hz: float = 2.0
    odom_rate_hz: float = 10.0
    seed: int = 0


# The mapping route stays at y <= 9 in room C, so C's north wall is seen from 3 m or more; the
# query route drives to 1.6 m from it, takes another line through A and B, under other light.
MAP_RUN = Run("map", ((1.5, 1.5), (6.5, 1.5), (6.8, 3.25), (9.5, 3.25), (14.5, 1.5), (14.5, 4.5),
                      (11.75, 5.0), (11.75, 8.0), (13.8, 9.0), (10.2, 9.0), (10.5, 7.2), (11.0, 4.5),
                      (9.0, 3.25), (6.0, 4.6), (1.5, 4.6), (1.5, 1.5)), seed=1)
QUERY_RUN = Run("query", ((2.5, 4.0), (5.5, 2.2), (7.0, 3.25), (10.0, 3.25), (13.0, 2.5), (13.5, 4.8),
                          (11.75, 6.0), (12.5, 9.0), (13.8, 10.4), (11.0, 10.4), (9.8, 8.0), (11.75, 6.0),
                          (10.0, 4.0), (7.0, 3.25), (3.0, 2.0)),
                speed=0.6, sweep_deg=20.0, sweep_period_m=7.0, sweep_phase=1.3, lighting=QUERY_LIGHT, seed=2)


# From room A of one block to room A of the next: through B and C, the door into the next block's
# B, and its door into A.
_TO_NEXT_BLOCK = ((6.8, 3.25), (9.5, 3.25), (11.75, 5.0), (11.75, 8.0), (11.75, 11.0), (11.75, 13.5),
                  (9.5, 15.25), (6.8, 15.25))


def site_runs(blocks: int = 1) -> tuple[Run, Run]:
    """The mapping and query runs through a site of `blocks` blocks: the demo's routes driven
    through each block in turn (the demo's own runs for one block)."""
    out = []
    for run in (MAP_RUN, QUERY_RUN):
        wp: list[tuple[float, float]] = []
        for b in range(blocks):
            y = b * BLOCK_Y
            wp += [(x, v + y) for x, v in run.waypoints]
            if b < blocks - 1:
                wp += [(x, v + y) for x, v in _TO_NEXT_BLOCK]
        out.append(replace(run, waypoints=tuple(wp)))
    return out[0], out[1]


def trajectory(run: Run) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stamps (ns, from 1 s) and T_map_base at the odometry rate along the run's route."""
    wp = np.asarray(run.waypoints, float)
    seg = np.linalg.norm(np.diff(wp, axis=0), axis=1)
    s_wp = np.concatenate([[0], np.cumsum(seg)])
    step = run.speed / run.odom_rate_hz
    s = np.arange(0.0, s_wp[-1], step)
    xy = np.stack([np.interp(s, s_wp, wp[:, 0]), np.interp(s, s_wp, wp[:, 1])], 1)
    # Heading: the path direction smoothed over about 1 m, plus a sinusoidal sweep.
    tang = np.gradient(xy, axis=0)
    k = max(1, int(0.5 / step))
    kernel = np.ones(2 * k + 1) / (2 * k + 1)
    tang = np.stack([np.convolve(np.pad(tang[:, i], k, mode="edge"), kernel, "valid") for i in range(2)], 1)
    yaw = np.unwrap(np.arctan2(tang[:, 1], tang[:, 0]))
    yaw += np.radians(run.sweep_deg) * np.sin(2 * np.pi * s / run.sweep_period_m + run.sweep_phase)
    stamps = 1_000_000_000 + np.round(np.arange(len(s)) / run.odom_rate_hz * 1e9).astype(np.int64)
    return stamps, [make_T(_Rz(a), [x, y, 0.0]) for (x, y), a in zip(xy, yaw)]


def odometry(T_map_base: list[np.ndarray], seed: int, scale_err: float = 0.01,
             yaw_drift_deg_per_m: float = 0.3, noise: float = 0.002) -> list[np.ndarray]:
    """Wheel odometry T_odom_base: the true increments with scale error, yaw bias and noise."""
    rng = np.random.default_rng(seed)
    out = [np.eye(4)]
    for A, B in zip(T_map_base[:-1], T_map_base[1:]):
        d = invert(A) @ B
        dist = float(np.linalg.norm(d[:3, 3]))
        dyaw = np.arctan2(d[1, 0], d[0, 0]) + np.radians(yaw_drift_deg_per_m) * dist + rng.normal(0, noise)
        dt = d[:3, 3] * (1 + scale_err) + np.r_[rng.normal(0, noise, 2), 0.0]
        out.append(out[-1] @ make_T(_Rz(dyaw), dt))
    return out


def write_run(path: str | Path, run: Run, scene: Scene, camera: Camera = DEMO_CAMERA, storage: str = "sqlite3",
              compressed: str | None = None, max_images: int | None = None, progress: bool = True) -> int:
    """Render one run into a contract bag; returns the number of images written."""
    from tqdm import tqdm

    stamps, T_map_base = trajectory(run)
    T_odom_base = odometry(T_map_base, run.seed)
    every = max(1, int(round(run.odom_rate_hz / run.image_rate_hz)))
    image_ids = list(range(0, len(stamps), every))[:max_images]
    last = image_ids[-1]
    renderer = Renderer(scene, camera)
    rng = np.random.default_rng(run.seed)
    with BagWriter(path, storage=storage, compressed=compressed, overwrite=True) as bag:
        bag.write_tf(int(stamps[0]), [("base_link", CAMERA_FRAME, T_BASE_CAMERA)], static=True)
        for i in range(last + 1):
            bag.write_tf(int(stamps[i]), [("odom", "base_link", T_odom_base[i])])
        for i in tqdm(image_ids, desc=f"render {run.name}", unit="img", disable=not progress):
            T_map_camera = T_map_base[i] @ T_BASE_CAMERA
            image = renderer.render(T_map_camera, run.lighting, rng)
            bag.write_image(int(stamps[i]), image, camera, CAMERA_FRAME)
            bag.write_pose(int(stamps[i]), T_map_camera)
    return len(image_ids)


def write_slam_run(src: str | Path, out: str | Path, run: Run = MAP_RUN, seed: int = 3, sigma_xy_m: float = 0.02,
                   sigma_yaw_deg: float = 0.3, start_delay_s: float = 3.0) -> int:
    """The bag of `run` at `src` as a robot running a 2D SLAM system records it: the ground-truth
    poses go, and `map -> odom` on /tf carries the SLAM's estimate, the truth with smoothly varying
    errors in x, y and yaw (z, roll and pitch are a 2D SLAM's zeros). The SLAM starts
    `start_delay_s` after the first odometry, so the first images have no pose in `map`.
    Returns the number of `map -> odom` transforms written."""
    stamps, T_map_base = trajectory(run)
    T_odom_base = odometry(T_map_base, run.seed)
    rng = np.random.default_rng(seed)
    k = max(1, int(2.0 * run.odom_rate_hz))  # errors correlated over about 2 s, as a SLAM's corrections are
    err = np.stack([np.convolve(rng.normal(0, 1, len(stamps) + 2 * k), np.ones(2 * k + 1), "valid")
                    for _ in range(3)], 1)
    err *= np.array([sigma_xy_m, sigma_xy_m, np.radians(sigma_yaw_deg)]) / err.std(0)
    reader = BagReader(src)
    topics = reader.topics
    n = 0
    with reader, BagWriter(out, overwrite=True) as bag:
        for topic, msgtype, t, data in reader.raw_messages([x for x in reader.available if x != topics.pose]):
            bag.write_cdr(topic, msgtype, data, t, transient_local=topic == topics.tf_static)
        for i, t in enumerate(stamps):
            if (t - stamps[0]) * 1e-9 < start_delay_s:
                continue
            T_slam = T_map_base[i].copy()
            T_slam[:3, :3] = _Rz(err[i, 2]) @ T_slam[:3, :3]
            T_slam[:2, 3] += err[i, :2]
            bag.write_tf(int(t), [("map", "odom", T_slam @ invert(T_odom_base[i]))])
            n += 1
    return n


def make_demo_data(out_dir: str | Path, storage: str = "sqlite3", compressed: str | None = None,
                   max_images: int | None = None, progress: bool = True, blocks: int = 1) -> dict[str, Path]:
    """Write the demo's mapping and query bags (out_dir/demo_map, out_dir/demo_query); with
    `blocks` > 1, of a site that many blocks large (about 190 map keyframes a block)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = build_scene(blocks=blocks)
    paths = {}
    for run in site_runs(blocks):
        p = out / f"demo_{run.name}"
        n = write_run(p, run, scene, storage=storage, compressed=compressed, max_images=max_images, progress=progress)
        log.info("wrote %s: %d images", p, n)
        paths[run.name] = p
    return paths
