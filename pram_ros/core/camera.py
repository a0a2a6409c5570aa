"""Camera model as sensor_msgs/CameraInfo describes it, with projection and COLMAP conversion."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

# ROS distortion model -> (number of coefficients, COLMAP model with its parameter order).
DISTORTION_MODELS = {
    "plumb_bob": 5,  # k1 k2 p1 p2 k3
    "rational_polynomial": 8,  # k1 k2 p1 p2 k3 k4 k5 k6
    "equidistant": 4,  # k1 k2 k3 k4 (fisheye)
}
# COLMAP camera model -> the ROS distortion model that projects the same way.
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": "plumb_bob", "PINHOLE": "plumb_bob", "SIMPLE_RADIAL": "plumb_bob", "RADIAL": "plumb_bob",
    "OPENCV": "plumb_bob", "FULL_OPENCV": "rational_polynomial", "OPENCV_FISHEYE": "equidistant",
    "SIMPLE_RADIAL_FISHEYE": "equidistant", "RADIAL_FISHEYE": "equidistant", "SIMPLE_FISHEYE": "equidistant",
    "FISHEYE": "equidistant",
}


class CameraError(ValueError):
    """A camera model that cannot be used (uncalibrated, unknown distortion, bad numbers)."""


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics plus a ROS distortion model; pixel coordinates as OpenCV (0 = pixel centre)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "plumb_bob"
    D: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        if self.model not in DISTORTION_MODELS:
            raise CameraError(
                f"unknown distortion model {self.model!r}; supported: {sorted(DISTORTION_MODELS)}")
        n = DISTORTION_MODELS[self.model]
        d = tuple(float(x) for x in self.D) + (0.0,) * max(0, n - len(self.D))
        if len(d) > n and any(d[n:]):
            raise CameraError(f"{self.model} takes {n} coefficients, got {len(self.D)}")
        object.__setattr__(self, "D", d[:n])
        nums = (self.fx, self.fy, self.cx, self.cy, *self.D)
        if not all(np.isfinite(nums)):
            raise CameraError(f"non-finite intrinsics or distortion: {nums}")
        if self.fx <= 0 or self.fy <= 0:
            raise CameraError(f"uncalibrated camera (fx={self.fx}, fy={self.fy}); K[0] must be > 0")
        if not (0 < self.width <= 20000 and 0 < self.height <= 20000):
            raise CameraError(f"implausible image size {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @classmethod
    def from_camera_info(cls, msg: Any, rectified: bool = False) -> "Camera":
        """The camera of the images a sensor_msgs/CameraInfo describes (an rclpy or a rosbags message).

        Raw images: K and D. Rectified images (image_rect): P, with no distortion left. Binning
        and a region of interest (the image is that crop of the full sensor) apply to both."""
        K = np.asarray(msg.k, dtype=float).reshape(-1)
        D = np.asarray(msg.d, dtype=float).reshape(-1)
        model = msg.distortion_model or "plumb_bob"
        if rectified:
            P = np.asarray(msg.p, dtype=float).reshape(-1)
            if P.size != 12:
                raise CameraError(f"CameraInfo.p has {P.size} values, expected 12 (rectified images)")
            K, D, model = P.reshape(3, 4)[:, :3].reshape(-1), np.zeros(5), "plumb_bob"
        if K.size != 9:
            raise CameraError(f"CameraInfo.k has {K.size} values, expected 9")
        if not D.size and model == "plumb_bob":
            D = np.zeros(5)
        bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
        roi = msg.roi
        x0, y0 = (roi.x_offset, roi.y_offset) if roi.width and roi.height else (0, 0)
        w, h = (roi.width, roi.height) if roi.width and roi.height else (msg.width, msg.height)
        return cls(int(w) // bx, int(h) // by, float(K[0]) / bx, float(K[4]) / by, (float(K[2]) - x0) / bx,
                   (float(K[5]) - y0) / by, model, tuple(float(x) for x in D))

    def camera_info_fields(self) -> dict[str, Any]:
        """The CameraInfo fields (k, d, p, r, distortion_model, width, height) of this camera."""
        P = np.zeros((3, 4))
        P[:, :3] = self.K
        return dict(width=self.width, height=self.height, distortion_model=self.model,
                    d=np.array(self.D, float), k=self.K.reshape(-1), r=np.eye(3).reshape(-1),
                    p=P.reshape(-1))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (a map's manifest, the build's work directory)."""
        return self.__dict__ | {"D": list(self.D)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        return cls(**{**d, "D": tuple(d["D"])})

    def scaled(self, s: float) -> "Camera":
        """The same camera for an image resized by factor s."""
        w, h = max(1, round(self.width * s)), max(1, round(self.height * s))
        sx, sy = w / self.width, h / self.height
        return Camera(w, h, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                      (self.cy + 0.5) * sy - 0.5, self.model, self.D)

    def project(self, p_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of camera-frame points (N,3) and a mask of those in front of the camera."""
        p = np.asarray(p_cam, dtype=np.float64).reshape(-1, 3)
        front = p[:, 2] > 1e-6
        uv = np.full((len(p), 2), np.nan)
        if front.any():
            q = p[front]
            x, y = self._distort(q[:, 0] / q[:, 2], q[:, 1] / q[:, 2])
            uv[front] = np.stack([self.fx * x + self.cx, self.fy * y + self.cy], 1)
        return uv, front

    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalized coordinates distorted by the model, as OpenCV's projectPoints (fisheye's for
        equidistant) computes them, in numpy: OpenCV's call took 3.3 ms for 10,000 points, this 0.03
        (the localizer projects the points in view 10-16 times a frame)."""
        d = self.D
        if self.model == "equidistant":
            r = np.hypot(x, y)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (d[0] + t2 * (d[1] + t2 * (d[2] + t2 * d[3]))))
            scale = np.where(r > 1e-8, theta_d / np.maximum(r, 1e-8), 1.0)
            return x * scale, y * scale
        k1, k2, p1, p2, k3, k4, k5, k6 = (d + (0.0,) * 8)[:8]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xy = x * y
        return (x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy)

    def contains(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Mask of the pixels (N,2) inside the image, grown by `margin` px on every side (NaN: not)."""
        with np.errstate(invalid="ignore"):
            return (uv[:, 0] >= -margin) & (uv[:, 1] >= -margin) & \
                (uv[:, 0] < self.width + margin) & (uv[:, 1] < self.height + margin)

    def normalize(self, uv: np.ndarray) -> np.ndarray:
        """Undistorted normalized image coordinates (x/z, y/z) of pixels (N,2)."""
        pts = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        if not len(pts):  # OpenCV answers None for no points (an image where SIFT found nothing)
            return np.zeros((0, 2))
        if self.model == "equidistant":
            out = cv2.fisheye.undistortPoints(pts, self.K, np.array(self.D))
        else:
            out = cv2.undistortPoints(pts, self.K, np.array(self.D), None, None, None,
                                          (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10))
        return out.reshape(-1, 2)

    @classmethod
    def from_pycolmap(cls, cam: Any) -> "Camera":
        """The camera of a pycolmap.Camera whose model a ROS distortion model expresses (COLMAP's
        extra parameters of these models come in ROS's order: k1 k2 [p1 p2 [k3 ...]])."""
        name = cam.model.name
        if name not in COLMAP_MODELS:
            raise CameraError(f"COLMAP camera model {name} has no ROS equivalent; supported: "
                              f"{', '.join(sorted(COLMAP_MODELS))} (undistort the images first)")
        D = tuple(float(cam.params[i]) for i in cam.extra_params_idxs())
        return cls(int(cam.width), int(cam.height), float(cam.focal_length_x), float(cam.focal_length_y),
                   float(cam.principal_point_x) - 0.5, float(cam.principal_point_y) - 0.5, COLMAP_MODELS[name], D)

    def to_pycolmap(self):
        """The equivalent pycolmap.Camera (COLMAP measures pixels from the corner: +0.5)."""
        import pycolmap

        base = [self.fx, self.fy, self.cx + 0.5, self.cy + 0.5]
        if self.model == "equidistant":
            model, params = "OPENCV_FISHEYE", base + list(self.D)
        elif self.model == "plumb_bob" and self.D[4] == 0.0:
            model, params = "OPENCV", base + list(self.D[:4])
        else:  # FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6
            model, params = "FULL_OPENCV", base + list((self.D + (0.0,) * 8)[:8])
        return pycolmap.Camera(model=model, width=self.width, height=self.height, params=params)
