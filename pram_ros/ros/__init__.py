"""The thin ROS layer: messages in, core calls, messages out."""
from __future__ import annotations

from typing import Callable


def run_node(make_node: Callable, args: list[str] | None = None, on_exit: Callable | None = None) -> None:
    """rclpy.init, spin the node until Ctrl-C or shutdown, then clean up (the nodes' entry points)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_exit:
            on_exit(node)
        node.destroy_node()
        rclpy.try_shutdown()
