"""pram_ros: PRAM visual localization for ROS 2 (core in pram_ros.core, ROS layer in pram_ros.ros)."""
# pycolmap 4.2.1's wheel breaks zlib users loaded after it (Python's zlib, OpenCV's and Pillow's
# PNG encoders then corrupt the heap and abort). Loading them first avoids it; every pram_ros
# entry point imports this package before pycolmap. See README, "Known issues".
import zlib  # noqa: F401  isort: skip

import cv2  # noqa: F401  isort: skip
from PIL import Image as _Image  # noqa: F401  isort: skip
