"""`ranker demo`: the main job end to end on embedded defaults (no Redis, no data to download).

simulate logs -> validate -> train MMoE + EMTL + self-auxiliary heads -> export ONNX to the registry
-> tune the score weights -> write an A/B experiment config (hand-picked vs tuned weights) -> start
the service on 127.0.0.1 -> a short simulated A/B test and its report -> a few ranked requests,
printed -> leave the service running (or stop it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import yaml

from cli.run_report import render_metrics
from ranker.schema import load_default_spec
from ranker.scoring import DEFAULT_FORMULA
from sim.simulate import SimulatorConfig, simulate
from sim.traffic import TrafficConfig, request_body, run_traffic, sample_requests
from sim.world import World
from training.ab.render import markdown
from training.ab.report import ab_report
from training.config import load_config
from training.data import read_log
from training.export import export_run
from training.prepare import prepare_data
from training.summary import summarize
from training.trainer import Trainer
from training.tune import tune
from training.tune_report import render, write_outputs

# configs/train.yaml's choices (the best configuration benchmarks/quality.py measured), written
# out because an installed package has no configs/ folder; tests/cli/test_demo.py keeps them equal.
RECOMMENDED = [
    "model.kind=mmoe",
    "model.config.interactions=dot",
    "model.config.feeds={completion: click}",
    "model.config.factor_rank=4",
    "tasks.losses={watch_time: zi_gamma, completion: zi_bce}",
    "balancer.name=ew",
    "aux.form=none",
    "optimizer.lr=0.003",
    "optimizer.embedding_l2=0.1",
    "optimizer.factor_l2=0.01",
    "optimizer.l2_per_id=0.5",
    "train.early_stopping=loss",
    "train.ema_decay=0.995",
    "calibration.drift=trend",
]
MODEL_NAME = "ranker"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def demo_sizes(quick: bool) -> tuple[SimulatorConfig, list[str], int, int]:
    """Simulator config, training overrides, tuning trials and A/B requests: full demo or quick."""
    if quick:
        sim = SimulatorConfig(
            users=300, items=1000, authors=100, days=4, requests_per_day=100, oracle=True
        )
        train = [
            "train.epochs=1",
            "train.batch_size=256",
            "train.max_steps_per_epoch=10",
            "model.config.num_experts=2",
            "model.config.expert_units=[16]",
            "model.config.tower_units=[8]",
        ]
        return sim, train, 10, 60
    sim = SimulatorConfig(users=5000, items=20000, days=7, requests_per_day=5000, oracle=True)
    train = [
        "train.epochs=2",
        "model.config.num_experts=8",
        "model.config.expert_units=[128, 64]",
        "model.config.tower_units=[64]",
    ]
    return sim, train, 60, 2000


def experiments_doc(model_version: str, tuned: dict | None) -> dict:
    """A 50/50 test of the hand-picked score weights (control) vs the tuned ones (treatment)."""
    model = {"name": MODEL_NAME, "version": model_version}
    doc: dict = {
        "version": 1,
        "salt": "demo",
        "default": {"model": model, "score": DEFAULT_FORMULA.to_dict()},
        "layers": [],
    }
    if tuned is not None:
        doc["layers"].append(
            {
                "name": "score_weights",
                "buckets": 100,
                "variants": [
                    {"name": "control", "buckets": [0, 50], "score": DEFAULT_FORMULA.to_dict()},
                    {"name": "tuned", "buckets": [50, 100], "score": tuned},
                ],
            }
        )
    return doc


def free_port(preferred: int = 8000) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _demo_service_pid(workdir: Path) -> int | None:
    """The pid in `workdir/serve.pid` when that process is alive and is the ranker service.

    The command line is checked (on Linux) so a pid the system has since given to another
    process is never signalled.
    """
    try:
        pid = int((workdir / "serve.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, but someone else's: not ours to stop
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"serving.server" not in cmdline.read_bytes():
        return None
    return pid


def stop_service(workdir: Path, timeout_s: float = 30.0) -> int:
    """Stop the service an earlier demo left running in `workdir` (SIGTERM: uvicorn drains)."""
    pid = _demo_service_pid(workdir)
    pid_file = workdir / "serve.pid"
    if pid is None:
        pid_file.unlink(missing_ok=True)
        print(f"no demo service is running for {workdir}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        print(f"the service (pid {pid}) did not stop within {timeout_s:.0f} s: killed")
    pid_file.unlink(missing_ok=True)
    print(f"stopped the demo service (pid {pid})")
    return 0


def start_service(
    workdir: Path, registry: Path, experiments: Path, port: int
) -> subprocess.Popen[bytes]:
    """`python -m serving.server` on 127.0.0.1 in the background; waits until /readyz says ready."""
    serving_dir = workdir / "serving"
    serving_dir.mkdir(exist_ok=True)
    impressions = serving_dir / "impressions.jsonl"
    impressions.unlink(missing_ok=True)  # this run's A/B test reads only this run's impressions
    env = {
        **os.environ,
        "RANKER_REGISTRY": str(registry),
        "RANKER_EXPERIMENTS_FILE": str(experiments),
        "RANKER_IMPRESSION_LOG": str(impressions),
        "RANKER_HOST": "127.0.0.1",
        "RANKER_PORT": str(port),
        "RANKER_LOG_LEVEL": "warning",
    }
    with (serving_dir / "serve.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.server"],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    (workdir / "serve.pid").write_text(f"{process.pid}\n")
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the service exited with code {process.returncode}; see {serving_dir / 'serve.log'}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"the service was not ready within 120 s; see {serving_dir / 'serve.log'}")


def show_rankings(url: str, world: World, count: int = 2, top_k: int = 5) -> None:
    """POST a few simulated users' requests and print each ranked list readably."""
    day = world.config.days
    for req in sample_requests(world, day, seed=99, n=count):
        body = request_body(world, req, top_k)
        body["request_id"] = f"demo-{req.request_id}"
        response = httpx.post(f"{url}/rank", json=body, timeout=10)
        response.raise_for_status()
        doc = response.json()
        layers = ", ".join(
            f"{x['layer']}: bucket {x['bucket']} -> {x['variant'] or 'default'}"
            for x in doc["experiment"]["layers"]
        )
        print(
            f"\nuser {body['user']['user_id']} ({len(body['candidates'])} candidates), model {doc['model_version']}, {layers or 'no experiment layers'}"
        )
        print(
            f"  {'rank':>4}  {'item':>6}  {'score':>7}  {'P(click)':>8}  {'watch s':>7}  {'completion':>10}"
        )
        for rank, item in enumerate(doc["items"], 1):
            p = item["predictions"]
            print(
                f"  {rank:>4}  {item['item_id']:>6}  {item['score']:>7.3f}  {p['click']:>8.3f}  {p['watch_time']:>7.1f}  {p['completion']:>10.3f}"
            )


def run_demo(workdir: Path, *, quick: bool = False, stop: bool = False) -> int:
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    if _demo_service_pid(workdir) is not None:  # it serves the registry this run rewrites
        print("a service from an earlier demo is running here: stopping it first")
        stop_service(workdir)
    sim_config, train_overrides, trials, ab_requests = demo_sizes(quick)
    registry, experiments = build_model(workdir, sim_config, train_overrides, trials, quick)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _step(f"start the service on {url} (ONNX Runtime, file experiment store, no Redis)")
    service = start_service(workdir, registry, experiments, port)
    try:
        ab_test(workdir, url, sim_config, ab_requests, experiments)
    except BaseException:
        service.terminate()
        (workdir / "serve.pid").unlink(missing_ok=True)
        raise
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    leave_service(workdir, service, url, stop=stop or quick)
    return 0


def build_model(
    workdir: Path,
    sim_config: SimulatorConfig,
    train_overrides: list[str],
    trials: int,
    quick: bool,
) -> tuple[Path, Path]:
    """Simulate, validate, train, export, tune and write the A/B experiment config: the registry
    and the experiment config the service will serve."""
    data_dir, run_dir, registry = workdir / "data", workdir / "run", workdir / "models"
    _step(f"simulate impression logs -> {data_dir}")
    sim = simulate(sim_config, data_dir, progress=not quick)
    print(
        f"{sim.rows:,} impressions, {sim.requests:,} requests, days {sim.days[0]} .. {sim.days[-1]}"
    )

    _step("load and validate with the simulator's feature spec")
    print(summarize(read_log(data_dir, load_default_spec())).render())

    _step(f"train MMoE, the recommended configuration of configs/train.yaml -> {run_dir}")
    config = load_config(
        None,
        [
            f"data.paths=[{data_dir}]",
            f"out={run_dir}",
            *RECOMMENDED,
            *train_overrides,
        ],
    )
    result = Trainer(config, prepare_data(config), run_dir, progress=not quick).fit()
    print(render_metrics(result))
    print(f"plots: {', '.join(sorted(p.name for p in run_dir.glob('*.png')))} in {run_dir}")

    _step(f"export ONNX (no auxiliary heads) -> {registry}")
    manifest = export_run(run_dir, registry, MODEL_NAME)
    version_dir = registry / MODEL_NAME / manifest.version
    print(
        f"{MODEL_NAME} {manifest.version}: sha256 {manifest.sha256[:16]}..., ONNX vs PyTorch max diff {manifest.exporter['parity_max_diff']:.1e}"
    )

    _step("tune the ranking-score weights on the validation day")
    tuned = tune(version_dir, [str(data_dir)], trials=trials, seed=0, progress=not quick)
    written = write_outputs(
        tuned, workdir / "tuning", {"name": MODEL_NAME, "version": manifest.version}
    )
    print(render(tuned))
    print(f"Pareto front: {written['png']}")

    experiments = workdir / "experiments.yaml"
    doc = experiments_doc(manifest.version, tuned.best.to_dict() if tuned.best else None)
    experiments.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"\nexperiment config (control = hand-picked weights, tuned = treatment): {experiments}")

    return registry, experiments


def ab_test(
    workdir: Path, url: str, sim_config: SimulatorConfig, requests: int, experiments: Path
) -> None:
    """Simulated users' requests against the running service, the A/B report, a few rankings."""
    world = World(sim_config)
    _step(
        f"simulated A/B test: {requests} requests from simulated users, outcomes from the ground truth"
    )
    traffic = run_traffic(
        world,
        TrafficConfig(
            url=url, out=workdir / "traffic", requests=requests, seconds=300, concurrency=4
        ),
    )
    print("\n".join(traffic.lines()[: 3 + len(traffic.requests_by_variant)]))
    report, files = ab_report(
        workdir / "traffic" / "outcomes.jsonl",
        workdir / "ab",
        impressions=workdir / "serving" / "impressions.jsonl",
        experiments=experiments,
    )
    print(markdown(report))
    print(f"A/B report: {files['markdown']}, {files['png']}")

    _step("rank a few requests")
    show_rankings(url, world)


def leave_service(workdir: Path, service: subprocess.Popen[bytes], url: str, *, stop: bool) -> None:
    """Stop the demo's service, or say how to reach and stop the one left running."""
    if stop:
        service.terminate()
        service.wait(timeout=30)
        (workdir / "serve.pid").unlink(missing_ok=True)
        print("service stopped")
    else:
        print(
            f"\nthe service keeps running (pid {service.pid}, log {workdir / 'serving' / 'serve.log'}):"
        )
        print(f"  API docs  {url}/docs")
        print(f"  metrics   {url}/metrics")
        print(f"  readiness {url}/readyz")
        stop_flag = "" if workdir == Path("out/demo") else f" --workdir {workdir}"
        print(
            f"  stop it   ranker demo --stop{stop_flag}   (or kill $(cat {workdir / 'serve.pid'}))"
        )
