"""Measures of images that tests assert on."""

from __future__ import annotations

import numpy as np


def sharpness(image: np.ndarray) -> float:
    """The variance of the Laplacian of an RGB image: high for detail (a face's features), near
    zero once blurred. Privacy tests compare a stored face with the original by it."""
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def video_frames(path) -> list[np.ndarray]:
    """Every frame of a video file, RGB, as OpenCV decodes it."""
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while (read := capture.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    capture.release()
    return frames
