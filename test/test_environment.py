"""Environment pitfalls the package guards against."""
import subprocess
import sys


def test_png_and_zlib_work_after_pycolmap_is_loaded():
    """pycolmap 4.2.1 breaks zlib users loaded after it; importing pram_ros first must prevent that."""
    code = (
        "import pram_ros\n"
        "import pycolmap\n"
        "import zlib, io, cv2, numpy as np\n"
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "for i in range(20):\n"
        "    cv2.imencode('.png', (np.random.rand(200, 200) * 255).astype(np.uint8))\n"
        "    zlib.compress(bytes(50000))\n"
        "fig = plt.figure(); fig.savefig(io.BytesIO(), format='png')\n"
        "print('fine')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fine" in out.stdout, out.stderr[-2000:]
