"""The localizer's bond with Nav2's lifecycle manager, with a bondpy peer playing the manager's side
(topic `bond`, id = the node's name): formed on activate, broken by a killed node within the
heartbeat timeout, released cleanly by a deactivate."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


from conftest import needs
from harness import Harness

HEARTBEAT_TIMEOUT_S = 4.0  # the manager's bond_timeout default


def manager_bond(h, node_name="localizer"):
    bondpy = needs("bondpy.bondpy", "bondpy")
    events = {"formed": None, "broken": None}
    bond = bondpy.Bond(h.peer, "bond", node_name, on_broken=lambda: events.__setitem__("broken", time.monotonic()),
                       on_formed=lambda: events.__setitem__("formed", time.monotonic()))
    bond.heartbeat_timeout = HEARTBEAT_TIMEOUT_S
    bond.start()
    return bond, events


def test_bond_forms_on_activate_and_deactivate_releases_it(domain_id, small_map):
    h = Harness(domain_id, {"map_path": str(small_map.out), "require_extrinsic": False})
    bond, events = manager_bond(h)
    try:
        h.node.trigger_configure()
        h.spin(lambda: events["formed"], 1.0)
        assert events["formed"] is None  # configured is not active: no bond yet
        h.node.trigger_activate()
        assert h.spin(lambda: events["formed"], 10), "no bond after activate"
        h.spin(lambda: False, 2 * 0.1 * 5)  # heartbeats flow: the bond holds
        assert events["broken"] is None
        t0 = time.monotonic()
        h.node.trigger_deactivate()
        assert h.spin(lambda: events["broken"], 10)
        assert events["broken"] - t0 < HEARTBEAT_TIMEOUT_S / 2  # told at once, not found out by a timeout
    finally:
        bond.shutdown()
        h.close()


def test_killed_node_breaks_the_bond_within_the_heartbeat_timeout(domain_id, small_map, tmp_path):
    h = Harness(domain_id, {"map_path": str(small_map.out)})  # only its peer node is used here
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.Popen([sys.executable, "-m", "pram_ros.ros.localizer_node", "--ros-args", "-r",
                             "__node:=bonded", "-p", f"map_path:={small_map.out}", "-p", "autostart:=true",
                             "-p", "require_extrinsic:=false"], env=env, stdout=open(tmp_path / "log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    bond, events = manager_bond(h, "bonded")
    try:
        assert h.spin(lambda: events["formed"], 120), (tmp_path / "log").read_text()
        h.spin(lambda: False, 1.0)  # the bond holds: heartbeats flow
        assert events["broken"] is None
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert h.spin(lambda: events["broken"], HEARTBEAT_TIMEOUT_S + 3)
        assert events["broken"] - t0 < HEARTBEAT_TIMEOUT_S + 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        bond.shutdown()
        h.close()
