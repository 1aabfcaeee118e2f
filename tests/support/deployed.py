"""The as-deployed check's harness: the Kubernetes manifests read as a cluster would, and the
image's containers run with podman as the pods run (scripts/as-deployed.sh,
tests/as_deployed/).

Nothing of a workload's configuration is written here by hand: its arguments, environment
(``envFrom`` and ``env`` from the ConfigMap and the Secret), security context, ``/tmp`` volume,
preStop hook and grace period are read from ``deploy/k8s/``. Only what ties the deployment to
this host is replaced (:func:`host_overrides`), and the replaced keys are printed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# AS_DEPLOYED_K8S: another copy of the manifests (to try a change to them before it lands).
K8S = Path(os.environ.get("AS_DEPLOYED_K8S") or ROOT / "deploy" / "k8s")

# The Secret's keys this harness can give a real value (secret.example.yaml holds placeholders).
SECRET_VALUES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ADMIN_TOKEN")
S3_SECRET_VALUES = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


def load(name: str) -> dict[str, Any]:
    """One manifest of ``deploy/k8s`` (each file holds one object)."""
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def configmap() -> dict[str, str]:
    """The ConfigMap's data, every key as shipped."""
    return {str(k): str(v) for k, v in (load("configmap.yaml").get("data") or {}).items()}


def secret_keys() -> list[str]:
    """The keys ``secret.example.yaml`` declares (its values are placeholders)."""
    secret = load("secret.example.yaml")
    return [str(k) for k in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}]


def real_secret(values: Mapping[str, str]) -> dict[str, str]:
    """The Secret as this host fills it: every declared key, each with a real value.

    A key the harness does not know how to fill fails here, rather than being passed on as
    its placeholder.
    """
    unknown = [key for key in secret_keys() if key not in values]
    if unknown:
        raise AssertionError(
            f"secret.example.yaml declares {unknown}: tests/support/deployed.py has no value "
            f"for them (add one to the as-deployed harness)"
        )
    return {key: values[key] for key in secret_keys()}


@dataclass
class Workload:
    """One container of a Deployment or Job, as its pod runs it."""

    file: str
    name: str
    args: list[str]
    env: dict[str, str]
    # Where each key came from ("configmap", "secret", "literal").
    sources: dict[str, str]
    user: str | None
    read_only: bool
    drop_all_caps: bool
    no_new_privileges: bool
    tmpfs: list[str]
    grace_s: int
    pre_stop: list[str] | None
    overridden: list[str] = field(default_factory=list)

    def security_args(self) -> list[str]:
        """podman arguments for the pod's and the container's securityContext and volumes."""
        out: list[str] = []
        if self.user:
            out += ["--user", self.user]
        if self.read_only:
            # podman would otherwise mount its own tmpfs on /tmp, /var/tmp and /run.
            out += ["--read-only", "--read-only-tmpfs=false"]
        if self.drop_all_caps:
            out += ["--cap-drop", "ALL"]
        if self.no_new_privileges:
            out += ["--security-opt", "no-new-privileges"]
        for mount in self.tmpfs:
            out += ["--tmpfs", mount]
        return out


def _container(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = doc["spec"]["template"]["spec"]
    containers = pod["containers"]
    assert len(containers) == 1, f"{doc['metadata']['name']}: one container expected"
    return pod, containers[0]


def workload(file: str, secret: Mapping[str, str]) -> Workload:
    """The container of ``deploy/k8s/<file>`` with its environment resolved."""
    doc = load(file)
    pod, container = _container(doc)
    cm_name = load("configmap.yaml")["metadata"]["name"]
    secret_name = load("secret.example.yaml")["metadata"]["name"]
    data = configmap()
    env: dict[str, str] = {}
    sources: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == cm_name, source
            env.update(data)
            sources.update(dict.fromkeys(data, "configmap"))
        elif "secretRef" in source:
            assert source["secretRef"]["name"] == secret_name, source
            env.update(secret)
            sources.update(dict.fromkeys(secret, "secret"))
        else:
            raise AssertionError(f"{file}: envFrom {source} is not understood")
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name], sources[name] = str(var["value"]), "literal"
            continue
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == cm_name, var
            env[name], sources[name] = data[ref["configMapKeyRef"]["key"]], "configmap"
        elif "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == secret_name, var
            env[name], sources[name] = secret[ref["secretKeyRef"]["key"]], "secret"
        else:
            raise AssertionError(f"{file}: env {var} is not understood")
    pod_ctx = pod.get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    user = None if uid is None else f"{uid}:{gid}" if gid is not None else str(uid)
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    tmpfs = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"{file}: only emptyDir volumes are mirrored ({volume})"
        size = (volume["emptyDir"] or {}).get("sizeLimit", "")
        option = f"size={size.removesuffix('i').lower()}" if size else ""
        tmpfs.append(f"{mount['mountPath']}:rw,{option}".rstrip(","))
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("exec", {})
    return Workload(
        file=file,
        name=container["name"],
        args=[str(a) for a in container.get("args") or []],
        env=env,
        sources=sources,
        user=user,
        read_only=bool(ctx.get("readOnlyRootFilesystem")),
        drop_all_caps="ALL" in ((ctx.get("capabilities") or {}).get("drop") or []),
        no_new_privileges=ctx.get("allowPrivilegeEscalation") is False,
        tmpfs=tmpfs,
        grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
        pre_stop=[str(a) for a in pre_stop["command"]] if pre_stop else None,
    )


def host_overrides(work: Workload, *, blob_backend: str, s3_endpoint: str, **host: str) -> Workload:
    """``work`` with what ties it to this host replaced, and the replaced keys recorded.

    ``host`` holds the values to set (``GATEWAY_HOST``, ``GATEWAY_PORT``, …); a key is only
    set for a workload whose role uses it (see the call sites). With the ``s3`` blob backend
    the S3 endpoint is this host's (the gateway's and the consumer's, whose retention deletes
    blobs). A pod the manifests give no S3 keys gets none here either: if it ever needed them,
    the check would say so.
    """
    changes = dict(host)
    if blob_backend == "s3" and work.env.get("BLOB_BACKEND") == "s3":
        changes["S3_ENDPOINT_URL"] = s3_endpoint
    work.env.update(changes)
    work.overridden = sorted(changes)
    return work


def describe(work: Workload, secret_keys_given: list[str]) -> str:
    """A line for the log: what came from where, and what was replaced."""
    from_cm = sorted(k for k, s in work.sources.items() if s == "configmap")
    from_secret = sorted(k for k, s in work.sources.items() if s == "secret")
    return (
        f"{work.file} ({' '.join(work.args)}): {len(from_cm)} ConfigMap keys passed through, "
        f"Secret keys {from_secret} (real values for {sorted(secret_keys_given)}), "
        f"overridden for this host: {work.overridden}"
    )


class Podman:
    """The containers of one run, by name; podman's storage is the one buildah built into."""

    def __init__(self, command: str, image: str, prefix: str, logs: Path) -> None:
        self.command = shlex.split(command)
        self.image = image
        self.prefix = prefix
        self.logs = logs
        self.names: list[str] = []

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def _args(self, name: str, work: Workload) -> list[str]:
        env_file = self.logs / f"{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(work.env.items())))
        return [
            "--name",
            name,
            # A pod's hostname is its name (the consumer names itself after it).
            "--hostname",
            name,
            "--network",
            "host",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--log-driver",
            "k8s-file",
            "--env-file",
            str(env_file),
            *work.security_args(),
            self.image,
            *work.args,
        ]

    def start(self, suffix: str, work: Workload) -> str:
        """Start the workload's container in the background; its name."""
        name = f"{self.prefix}-{suffix}"
        self.names.append(name)
        done = self._run("run", "--detach", *self._args(name, work))
        if done.returncode != 0:
            raise AssertionError(f"podman run {name} failed: {done.stderr.strip()}")
        return name

    def run_to_end(self, suffix: str, work: Workload, timeout: float) -> tuple[int, str]:
        """Run the workload (a Job) to its end: exit code and output."""
        name = self.start(suffix, work)
        done = self._run("wait", name, timeout=timeout)
        code = int(done.stdout.strip() or "-1") if done.returncode == 0 else -1
        return code, self.output(name)

    def output(self, name: str) -> str:
        done = self._run("logs", name)
        return done.stdout + done.stderr

    def running(self, name: str) -> bool:
        done = self._run("inspect", "--format", "{{.State.Running}}", name)
        return done.stdout.strip() == "true"

    def pre_stop(self, name: str, work: Workload) -> float:
        """The pod's preStop hook, run in the container as the kubelet does; its seconds."""
        if not work.pre_stop:
            return 0.0
        began = time.monotonic()
        done = self._run("exec", name, *work.pre_stop, timeout=work.grace_s)
        if done.returncode != 0:
            raise AssertionError(f"preStop {work.pre_stop} in {name}: {done.stderr.strip()}")
        return time.monotonic() - began

    def terminate(self, name: str, work: Workload) -> int:
        """What the kubelet does to a pod being replaced: preStop, SIGTERM, SIGKILL at the end
        of the grace period. Returns the exit code."""
        spent = self.pre_stop(name, work)
        left = max(1, int(work.grace_s - spent))
        done = self._run("stop", "--time", str(left), name, timeout=left + 60)
        if done.returncode != 0:
            raise AssertionError(f"podman stop {name}: {done.stderr.strip()}")
        inspected = self._run("inspect", "--format", "{{.State.ExitCode}}", name)
        self.save_log(name)
        return int(inspected.stdout.strip() or "-1")

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """A command run in the container, as its user."""
        return self._run("exec", name, *argv)

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        """The image's own HEALTHCHECK, run once in the container."""
        return self._run("healthcheck", "run", name)

    def save_log(self, name: str) -> None:
        (self.logs / f"{name}.log").write_text(self.output(name))

    def remove_all(self) -> None:
        """Remove every container this run started (their logs saved first)."""
        for name in self.names:
            try:
                self.save_log(name)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"as-deployed: no log for {name}: {exc}", file=sys.stderr)
        if self.names:
            self._run("rm", "--force", "--time", "0", *self.names, timeout=180)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}
