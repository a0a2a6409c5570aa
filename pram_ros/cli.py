"""`pram-ros`: the command line of the package (bags, demo data, map building, evaluation, replay)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from .core.bag import BagError, BagReader, BagTopics
from .core.build import build_settings
from .core.localizer import LocalizerConfig
from .core.matcher import MatcherConfig
from .core.fine import FineConfig
from .core.flow import FlowConfig
from .core.matcher_training import MatcherTrainConfig
from .core.params import add_options, options, specs
from .core.registration import RegistrationConfig
from .core.workdir import STAGES


def evaluate_settings() -> dict:
    """The localizer settings `evaluate` takes as options."""
    loc = specs(LocalizerConfig)
    return {"method": loc["method"], "device": loc["device"], "fine": specs(FineConfig)["enabled"].renamed("fine"),
            "flow": specs(FlowConfig)["enabled"].renamed("flow"), "matcher": loc["matcher"],
            "matcher_path": loc["matcher_path"], **specs(RegistrationConfig)}


def _topic_args(p: argparse.ArgumentParser) -> None:
    d = BagTopics()
    g = p.add_argument_group("topics (defaults from the bag contract)")
    for name in ("image", "compressed", "camera_info", "pose", "tf", "tf_static"):
        g.add_argument(f"--{name.replace('_', '-')}-topic", dest=f"{name}_topic", default=getattr(d, name))


def _topics(a: argparse.Namespace) -> BagTopics:
    return BagTopics(a.image_topic, a.compressed_topic, a.camera_info_topic, a.pose_topic, a.tf_topic,
                     a.tf_static_topic)


def bag_summary(path: Path, topics: BagTopics = BagTopics()) -> str:
    """A few lines describing a contract bag: topics, counts, images, poses, odometry."""
    with BagReader(path, topics) as r:
        counts = r.counts()
        lines = [f"{path}:"]
        lines += [f"  {t:<32} {ty:<32} {counts.get(t, 0):>6} msgs" for t, ty in sorted(r.available.items())]
        first = next(r.frames(), None)
        if first is not None:
            cams = [f"{c.width}x{c.height} {c.model} fx={c.fx:.1f} fy={c.fy:.1f}" for c in r.cameras()]
            lines.append(f"  images: {len(r)} on {r.image_topic}, camera {cams[0]}, frame '{first.camera_frame}'"
                         if len(cams) == 1 else
                         f"  images: {len(r)} on {r.image_topic}, {len(cams)} cameras ({'; '.join(cams[:3])}"
                         f"{'; ...' if len(cams) > 3 else ''}), frame '{first.camera_frame}'")
            fn = r.frame_names
            lines.append(f"  ground-truth poses: {'yes' if r.has_poses else 'no'}; SLAM poses ({fn.map} -> {fn.base} "
                         f"on TF): {'yes' if r.has_global_poses else 'no'}; odometry: "
                         f"{'yes' if first.T_odom_base is not None else 'no'}; camera extrinsic: "
                         f"{'yes' if first.T_base_camera is not None else 'no'}")
    return "\n".join(lines)


def map_summary(path: Path) -> str:
    """What a map directory holds, once every file's checksum and array has been verified: the
    build's summary rows, the features, cameras, fine layer, files, and the route `auto` takes."""
    from .core.build import format_rows, map_rows
    from .core.localizer import auto_route
    from .core.map import MapError, has_baseline, load_map, read_manifest
    from .core.sfm import PoseAdjustment

    m = load_map(path)
    files = read_manifest(path)["files"]
    info, f = m.info, m.features
    try:
        adjustment = PoseAdjustment(**info["pose_adjustment"]) if info.get("pose_adjustment") else None
        source = str(info.get("pose_source", "?")) + (f" ({info['skipped_no_pose']} images without a pose skipped)"
                                                       if info.get("skipped_no_pose") else "")
        rows = [("built from", str(info.get("bag", "?"))),
                *map_rows(source, m.images, len(m.points), m.num_landmarks, len(m.vrf_frame), m.frame, m.metric,
                          adjustment, dict(info.get("recognition", {})))]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MapError(f"{path}/manifest.json has a malformed build record: {exc}") from exc
    route, fallback = auto_route(m.images, has_baseline({"files": files}))
    rows += [("features", f"{f['name']}, {f['max_keypoints']} keypoints"
              + (f" at {f['resize_max']} px" if f.get("resize_max") else " at full resolution")),
             *[(f"camera {i}", f"{c.width}x{c.height} {c.model} fx={c.fx:.1f} fy={c.fy:.1f}")
               for i, c in enumerate(m.cameras)],
             ("recognizer", f"{m.recognizer_config['layers']} layers x {m.recognizer_config['hidden']}"),
             ("fine layer", f"{len(m.fine.points)} points ({m.fine.features['name']}, "
                            f"{m.fine.features['max_keypoints']} keypoints an image)" if m.fine is not None
              else "none (the final pose is the coarse one)"),
             ("files", ", ".join(f"{name} {meta['bytes'] / 1e6:.2f} MB" for name, meta in files.items())),
             ("method auto", {("exhaustive", False): "exhaustive (matches every map image: a map this small)",
                              ("pram", True): "pram, then every map image for what recognition cannot pose",
                              ("pram", False): "pram (recognition, then landmark-wise PnP)"}[route, fallback]),
             *[("WARN", str(w)) for w in info.get("warnings", [])]]
    return f"{path}: pram_ros map, checksums and arrays verified\n{format_rows(rows)}"


def cmd_info(a: argparse.Namespace) -> int:
    for path in map(Path, a.paths):
        if (path / "manifest.json").is_file():
            print(map_summary(path))
        elif path.is_dir() and not (path / "metadata.yaml").is_file():
            raise ValueError(f"{path} is neither a bag (no metadata.yaml) nor a pram_ros map (no manifest.json)")
        else:
            print(bag_summary(path, _topics(a)))
    return 0


def cmd_make_demo_data(a: argparse.Namespace) -> int:
    from .core.synthetic import make_demo_data

    if a.blocks < 1:
        raise ValueError(f"--blocks must be at least 1, got {a.blocks}")
    paths = make_demo_data(a.out, storage=a.storage, compressed=a.compressed, max_images=a.max_images,
                           blocks=a.blocks)
    for p in paths.values():
        print(bag_summary(p))
    return 0


def cmd_images_to_bag(a: argparse.Namespace) -> int:
    from .core.image_sets import image_set_to_bags

    paths = image_set_to_bags(a.folder, a.out, query_every=a.query_every, storage=a.storage, model=a.model,
                              images=a.images, name=a.name)
    for p in paths.values():
        print(bag_summary(p))
    return 0


def _quiet_colmap() -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 2  # COLMAP's glog INFO/WARNING lines would drown the progress bars


def cmd_build_map(a: argparse.Namespace) -> int:
    from .core.build import build_config, build_map
    from .core.distributed import init_from_env

    _quiet_colmap()
    conf = build_config(options(a, build_settings()))
    init_from_env(conf.features.device)  # under torchrun: join its processes (distributed.py)
    summary = build_map(a.bag, a.out, conf, _topics(a), work_dir=a.work_dir, from_stage=a.from_stage)
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    for w in summary.warnings:
        print(f"WARNING: {w}")
    print(f"== map written to {summary.out}")
    print(summary.table())
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .core.evaluation import evaluate, report_table
    from .core.localizer import Localizer

    _quiet_colmap()
    v = options(a, evaluate_settings())
    loc = Localizer(a.map_dir, LocalizerConfig(method=v["method"], device=v["device"], tracking=a.tracking,
                                               fine=FineConfig(enabled=v["fine"]), flow=FlowConfig(enabled=v["flow"]),
                                               matcher=v["matcher"],
                                               matcher_path=v["matcher_path"],
                                               registration=RegistrationConfig(v["ransac_thresh_px"],
                                                                               v["min_inliers"])))
    report = evaluate(loc, a.query_bag, a.out, tracking=a.tracking, topics=_topics(a))
    print(f"== report in {a.out}/report.json")
    print(report_table(report))
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from .ros.replay import replay

    report = replay(a.map_dir, a.bag, a.out, rate=a.rate, topics=_topics(a), node_params=a.param or [],
                    lockstep=a.lockstep)
    print(f"== replay report in {a.out}/report.json (node output recorded in {a.out}/recorded)")
    print_replay(report)
    return 0


def print_replay(report: dict) -> None:
    from .core.evaluation import report_table

    print(report_table(report))
    if "map_odom" in report:
        mo = report["map_odom"]
        print(f"  map->odom + odometry vs truth: median {mo['median_translation_m']:.3f} m, "
              f"{mo['median_rotation_deg']:.2f} deg ({mo['within_0.25m_2deg']:.0%} within 0.25 m, 2 deg)")


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job on the embedded default: demo bags -> map -> replay through the node -> report."""
    from .core.build import build_map
    from .core.synthetic import make_demo_data
    from .ros.replay import replay

    _quiet_colmap()
    data = Path(a.data)
    bags = {"map": data / "demo_map", "query": data / "demo_query"}
    if a.regenerate or not all((p / "metadata.yaml").exists() for p in bags.values()):
        print(f"== 1/3 rendering the demo bags into {data}/ (synthetic 3-room place, 640x480)")
        bags = make_demo_data(data)
    else:
        print(f"== 1/3 demo bags already in {data}/ (--regenerate renders them again)")
    for p in bags.values():
        print(bag_summary(p))
    map_dir = data / "demo_map.pram"
    if a.regenerate or not (map_dir / "manifest.json").exists():
        print(f"== 2/3 building the map {map_dir} from the mapping bag")
        summary = build_map(bags["map"], map_dir)
        print(summary.table())
    else:
        print(f"== 2/3 map already built: {map_dir}")
    pace = "lockstep" if a.lockstep else f"rate {a.rate}x"
    print(f"== 3/3 replaying the query bag through the localizer node ({pace}, sim time)")
    report = replay(map_dir, bags["query"], data / "demo_report", rate=a.rate, lockstep=a.lockstep)
    print(f"== report: {data}/demo_report/report.json, trajectory plot: {data}/demo_report/trajectory.png")
    print_replay(report)
    return 0


def cmd_train_matcher(a: argparse.Namespace) -> int:
    """Pairs (made once, kept in OUT/pairs.npz), then training with checkpoints; a rerun resumes."""
    import torch

    from .core.features import FeatureConfig, make_extractor
    from .core.matcher import MatcherConfig
    from .core.matcher_training import (MatcherTrainConfig, homography_pairs, load_pairs, map_pairs, rendered_pairs,
                                        save_pairs, train_matcher)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    key = f"rendered={a.rendered} homography={a.homography} maps={sorted(a.map_work_dir or [])}"
    pairs = load_pairs(out / "pairs.npz", key)
    if pairs is None:
        extractor = make_extractor(FeatureConfig(device=a.device))
        pairs = rendered_pairs(a.rendered, extractor) + homography_pairs(a.homography, extractor)
        for w in a.map_work_dir or []:
            pairs += map_pairs(w)
        save_pairs(pairs, out / "pairs.npz", key)
    print(f"== {len(pairs)} training pairs ({out / 'pairs.npz'})")
    conf = MatcherConfig(hidden=a.hidden, layers=a.layers, pose_layers=tuple(a.pose_layers))
    tc = MatcherTrainConfig(steps=a.steps, batch_size=a.batch_size, keypoints=a.keypoints)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       "cpu" if a.device == "auto" else a.device)
    report = train_matcher(pairs, out, conf, tc, dev)
    loss = report["loss"]
    print(f"== matcher written to {out / 'matcher.pt'}")
    print(f"  steps {report['steps']}, {report['seconds'] / 60:.1f} min on {dev}; loss first 50 steps "
          f"{np.mean(loss[:50]):.3f}, last 50 {np.mean(loss[-50:]):.3f}")
    _loss_png(loss, out / "loss.png")
    return 0


def _loss_png(loss: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    k = max(1, len(loss) // 100)
    ax.plot(np.convolve(loss, np.ones(k) / k, "valid"))
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (mean of {k})")
    ax.set_title("matcher training")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def cmd_eval_matcher(a: argparse.Namespace) -> int:
    """Every matcher on the evaluation sets, one table, results.json and a PNG of a sample pair."""
    import json

    from .core.evaluation import write_atomic
    from .core.features import FeatureConfig, make_extractor
    from .core.matcher_eval import (demo_pairs, evaluate_matchers, fox_pairs, learned_matcher, lighterglue_matcher,
                                    matches_png, nn_matcher, table, wide_pairs)
    from .core.matcher_training import load_matcher

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = make_extractor(FeatureConfig(device="cpu"))
    sets = {}
    if a.fox:
        sets["fox"] = fox_pairs(a.fox, extractor)
    demo = Path(a.demo_data)
    if (demo / "demo_map" / "metadata.yaml").exists():
        sets["demo"] = demo_pairs(demo / "demo_map", demo / "demo_query", extractor)
    else:
        print(f"no demo bags in {demo} (pram-ros make-demo-data --out {demo}): demo set left out")
    if a.wide:
        sets["wide"] = wide_pairs(a.wide, extractor)
    methods = {"nn": nn_matcher(), "lighterglue": lighterglue_matcher()}
    if a.weights:
        model = load_matcher(a.weights)
        methods |= {"imp single-shot": learned_matcher(model, False), "imp iterative": learned_matcher(model, True)}
    results = evaluate_matchers(sets, methods)
    print(table(results))
    write_atomic(out / "results.json", json.dumps({s: {m: r.row() for m, r in v.items()} for s, v in results.items()},
                                                  indent=1))
    sample = next((p for p in sets.get("demo", []) if p.images is not None), None)
    if sample is not None:
        for name, fn in methods.items():
            png = out / f"matches_{name.replace(' ', '_')}.png"
            write_atomic(png, matches_png(sample, fn(sample), f"{name}: demo query vs map"))
        print(f"== pictures of a demo pair: {out}/matches_*.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pram-ros", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("info", help="describe contract bags and pram_ros maps")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a bag, or a map directory (its files are verified)")
    _topic_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-demo-data", help="render the synthetic mapping and query bags")
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--compressed", choices=["jpeg", "png"], default=None, help="write CompressedImage")
    p.add_argument("--max-images", type=int, default=None, help="truncate each run (for quick tests)")
    p.add_argument("--blocks", type=int, default=1, help="site size: blocks of three rooms, about 190 map "
                                                           "keyframes each (default: 1, the demo)")
    p.set_defaults(func=cmd_make_demo_data)

    p = sub.add_parser("images-to-bag", aliases=["fox-to-bag"],
                       help="convert a posed image set (COLMAP model, or NeRF transforms.json) into map and query bags")
    p.add_argument("folder", help="a folder with transforms.json (as fox), or a COLMAP scene (a model in it, "
                                  "sparse/0 or sparse, images in images/)")
    p.add_argument("--model", default=None, help="the COLMAP model's folder (cameras, images: .bin or .txt)")
    p.add_argument("--images", default=None, help="the folder the model's image names are relative to "
                                                  "(default: FOLDER/images)")
    p.add_argument("--name", default=None, help="bag names NAME_map, NAME_query (default: the folder's name)")
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--query-every", type=int, default=5, help="every N-th image (in name order) is a query")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.set_defaults(func=cmd_images_to_bag)

    p = sub.add_parser("build-map", help="build a PRAM map from a contract bag")
    p.add_argument("bag")
    p.add_argument("--out", required=True, help="map directory to write (replaced atomically)")
    p.add_argument("--work-dir", help="where each stage's result goes, so that a rerun resumes after the last "
                                      "finished stage (default: OUT.work beside the map)")
    p.add_argument("--from-stage", choices=STAGES, help="redo this stage and the ones after it, whatever the work "
                                                         "directory holds")
    add_options(p, build_settings())
    _topic_args(p)
    p.set_defaults(func=cmd_build_map)

    p = sub.add_parser("evaluate", help="localize a query bag against a map and compare with its ground truth")
    p.add_argument("map_dir")
    p.add_argument("query_bag")
    p.add_argument("--out", required=True, help="report directory")
    add_options(p, evaluate_settings())
    p.add_argument("--tracking", action="store_true", help="track between frames (default: relocalize each)")
    _topic_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("replay", help="play a bag into the localizer node (sim time) and evaluate what it publishes")
    p.add_argument("map_dir")
    p.add_argument("bag")
    p.add_argument("--out", required=True, help="report directory (also gets the recorded output bag)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--lockstep", action="store_true",
                   help="publish each image only once the node has answered the previous one (measures "
                        "accuracy whatever the machine's load; --rate is then ignored)")
    p.add_argument("--param", action="append", help="extra node parameter NAME:=VALUE (repeatable)")
    _topic_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("train-matcher", help="train the learned matcher (rendered, photo and map pairs)")
    p.add_argument("--out", required=True, help="directory for pairs, checkpoints and matcher.pt (a rerun resumes)")
    p.add_argument("--rendered", type=int, default=600, help="pairs rendered from a synthetic place")
    p.add_argument("--homography", type=int, default=300, help="pairs of warped bundled photographs")
    p.add_argument("--map-work-dir", action="append", help="a built map's work directory: its image pairs "
                                                           "(repeatable)")
    p.add_argument("--steps", type=int, default=MatcherTrainConfig().steps)
    p.add_argument("--batch-size", type=int, default=MatcherTrainConfig().batch_size)
    p.add_argument("--keypoints", type=int, default=MatcherTrainConfig().keypoints, help="per image in a batch")
    p.add_argument("--hidden", type=int, default=MatcherConfig().hidden)
    p.add_argument("--layers", type=int, default=MatcherConfig().layers)
    p.add_argument("--pose-layers", type=int, nargs="+", default=list(MatcherConfig().pose_layers))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_train_matcher)

    p = sub.add_parser("eval-matcher", help="pose AUC, precision, recall and time of the matchers side by side")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--weights", help="a trained matcher.pt (without it: the matchers that ship only)")
    p.add_argument("--fox", help="the fox image set (transforms.json + images)")
    p.add_argument("--demo-data", default="data", help="where the demo bags are (default: data)")
    p.add_argument("--wide", type=int, default=60, help="rendered pairs with large viewpoint changes")
    p.set_defaults(func=cmd_eval_matcher)

    p = sub.add_parser("demo", help="the full loop on the embedded synthetic place")
    p.add_argument("--data", default="data", help="where bags, map and report go (default: data)")
    p.add_argument("--regenerate", action="store_true", help="render the bags and build the map again")
    p.add_argument("--rate", type=float, default=0.5, help="replay speed factor")
    p.add_argument("--lockstep", action="store_true", help="replay each image once the node answered the last")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except (BagError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"pram-ros: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
