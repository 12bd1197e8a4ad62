"""``genaug status``: the cluster, the Serve app, the queue and the storage root on one screen.

It joins the Ray cluster named by ``RAY_ADDRESS``, or else the local Ray of a running ``genaug serve``
for the same storage root (``genaug serve`` records its Ray address in ``service.json`` in the root's
local state folder, ``<root>/state`` for a local root). It never starts Ray: when nothing runs it says
so, and still shows the queue from the SQLite store.

Also here: the storage check behind ``genaug serve``'s warning, since a storage root on one node's own
disk is wrong as soon as the cluster spans several machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cluster import APP_NAME, NAMESPACE, QUEUE_ACTOR
from cluster.queue import JobStore
from jobs.rayinit import pid_alive
from jobs.store.location import resolve_home, state_dir, write_json_atomic

SERVICE_FILE = "service.json"  # in the storage root's local state folder (jobs.store.location.state_dir)
# File systems that several machines can mount as one: network and cluster file systems, FUSE mounts
# of object stores (gcsfuse, s3fs, mountpoint-s3, juicefs), and EFS/Filestore (NFS underneath).
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "cephfs",
    "glusterfs",
    "lustre",
    "gpfs",
    "beegfs",
    "afs",
    "ocfs2",
    "gfs2",
    "efs",
}
SHARED_URI = re.compile(r"^(s3|gs|gcs|abfss?|az|hdfs)://")


# ------------------------------------------------------------------ the storage check


def mount_fs_type(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (longest mount point in ``/proc/mounts``), or None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.abspath(path)
    best, best_len = None, -1
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best_len:
            best, best_len = parts[2], len(point)
    return best


def is_shared_root(root: str, fs_type: str | None) -> bool:
    """True when every node can see the same ``root``: an object-store URI or a network file system."""
    if SHARED_URI.match(root):
        return True
    return fs_type is not None and (fs_type in NETWORK_FS or fs_type.startswith("fuse."))


def storage_warning(root: str, machines: int, fs_type: str | None) -> str | None:
    """The warning for a storage root that only this machine sees on a cluster of several machines.

    ``machines``: distinct hosts among Ray's alive nodes (several Ray nodes on one host share its disk);
    ``fs_type``: the root's file system type (``mount_fs_type``). None when there is nothing to warn about.
    """
    if machines <= 1 or is_shared_root(root, fs_type):
        return None
    return (
        f"the storage root {root} is on this machine's own disk ({fs_type or 'unknown file system'}), "
        f"but the Ray cluster spans {machines} machines: generator replicas there would write shards "
        "and look for models on their own disks. Use a root that every node mounts at the same path "
        "(NFS, EFS, Filestore; a ReadWriteMany volume on Kubernetes) with --home or GENAUG_HOME "
        "(README: Run on a cluster)."
    )


def alive_machines() -> int:
    """Distinct hosts among the connected Ray's alive nodes."""
    import ray

    return len({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})


def cluster_storage_warning(home: str | os.PathLike | None) -> str | None:
    """``storage_warning`` for the connected Ray and the local storage root ``home``."""
    root = str(resolve_home(home))
    return storage_warning(root, alive_machines(), mount_fs_type(root))


# ------------------------------------------------------------------ where a running service is


def record_service(home: str | os.PathLike | None, url: str) -> Path:
    """Written by ``genaug serve`` once it serves: its Ray address, URL and pid, for ``genaug status``."""
    import ray

    path = state_dir(home) / SERVICE_FILE
    write_json_atomic(
        path,
        {
            "ray_address": ray.get_runtime_context().gcs_address,
            "url": url,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "home": str(resolve_home(home)),
            "started_at": time.time(),
            # a local ray.init turns token auth on by default; status must connect the same way
            "auth_mode": os.environ.get("RAY_AUTH_MODE", ""),
        },
    )
    return path


def forget_service(home: str | os.PathLike | None) -> None:
    """Remove the recorded ``service.json`` if this process wrote it."""
    path = state_dir(home) / SERVICE_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def read_service(home: str | os.PathLike | None) -> dict | None:
    """The recorded ``genaug serve`` of this storage root, if its process still runs (or runs elsewhere)."""
    path = state_dir(home) / SERVICE_FILE
    try:
        service = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if service.get("hostname") == socket.gethostname():
        try:
            pid = int(service["pid"])
        except (ValueError, KeyError, TypeError):
            return None
        if not pid_alive(pid):
            return None  # it died without cleaning up
    return service


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    """Whether ``host:port`` accepts TCP connections (other address forms are tried by Ray itself)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if not m:
        return True
    try:
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout_s):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ collecting


def collect(home: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything ``genaug status`` shows, as JSON-able data; connects to Ray only if one runs."""
    root = str(resolve_home(home))
    service = read_service(root)
    address = os.environ.get("RAY_ADDRESS") or (service or {}).get("ray_address")
    if not os.environ.get("RAY_ADDRESS") and (service or {}).get("auth_mode"):
        # before Ray is imported: it reads the mode once
        os.environ.setdefault("RAY_AUTH_MODE", service["auth_mode"])
    import ray

    data: dict[str, Any] = {"home": root, "service": service, "ray": None, "serve": None, "queue": None}
    if address and not ray.is_initialized():
        if not _reachable(address):
            data["error"] = f"no Ray answers at {address}"
        else:
            try:
                ray.init(
                    address=address,
                    log_to_driver=False,
                    logging_config=ray.LoggingConfig(log_level="ERROR"),
                    configure_logging=True,
                )
            except Exception as e:  # e.g. token auth: the cluster wants a token this process lacks
                data["error"] = (
                    f"cannot connect to Ray at {address}: {e}; if the cluster uses token auth, "
                    "set RAY_AUTH_MODE=token with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
                )
    elif not address and not ray.is_initialized():
        data["error"] = "no RAY_ADDRESS, and no running `genaug serve` for this root"
    if ray.is_initialized():
        data["ray"] = _cluster(address or "this process")
        data["serve"] = _serve()
        data["queue"] = _queue_from_actor()
    if data["queue"] is None:
        data["queue"] = _queue_from_store(root)
    owner_home = ((data["queue"] or {}).get("owner") or {}).get("home")
    data["storage"] = _storage(owner_home or root, data["ray"])
    return data


def _cluster(address: str) -> dict[str, Any]:
    import ray

    nodes = ray.nodes()
    alive = [n for n in nodes if n.get("Alive")]
    total, free = ray.cluster_resources(), ray.available_resources()
    return {
        "address": address,
        "nodes_alive": len(alive),
        "nodes_dead": len(nodes) - len(alive),
        "machines": len({n["NodeManagerAddress"] for n in alive}),
        "cpus": total.get("CPU", 0.0),
        "cpus_free": free.get("CPU", 0.0),
        "gpus": total.get("GPU", 0.0),
        "gpus_free": free.get("GPU", 0.0),
        "nodes": [
            {
                "node_id": n["NodeID"],
                "address": n["NodeManagerAddress"],
                "hostname": n.get("NodeManagerHostname", ""),
                "head": "node:__internal_head__" in n.get("Resources", {}),
                "cpus": n.get("Resources", {}).get("CPU", 0.0),
                "gpus": n.get("Resources", {}).get("GPU", 0.0),
            }
            for n in alive
        ],
    }


def _serve() -> dict[str, Any]:
    from ray import serve

    try:
        st = serve.status()
    except Exception as e:  # Serve was never started on this cluster
        return {"running": False, "error": f"{type(e).__name__}: {e}".strip()}
    apps = {}
    for name, app in st.applications.items():
        apps[name] = {
            "status": str(getattr(app.status, "value", app.status)),
            "message": app.message or "",
            "deployments": {
                d: {
                    "status": str(getattr(ds.status, "value", ds.status)),
                    "replicas": {str(getattr(k, "value", k)): int(v) for k, v in ds.replica_states.items()},
                    "message": ds.message or "",
                }
                for d, ds in app.deployments.items()
            },
        }
    proxies = {str(k): str(getattr(v, "value", v)) for k, v in st.proxies.items()}
    return {"running": True, "applications": apps, "proxies": proxies}


def _queue_from_actor() -> dict[str, Any] | None:
    import ray

    try:
        owner = ray.get_actor(QUEUE_ACTOR, namespace=NAMESPACE)
        if "worker_id" not in ray.get(owner.info.remote(), timeout=15):
            return None  # an older queue owner without summary(): calling it would crash that actor
        return {**ray.get(owner.summary.remote(), timeout=15), "source": "queue owner actor"}
    except Exception:
        return None


def _queue_from_store(root: str) -> dict[str, Any] | None:

    path = Path(root) / "state" / "queue.sqlite"
    if not path.is_file():
        return None
    try:
        with JobStore(path, readonly=True) as store:
            return {**store.summary(), "source": f"SQLite {path}"}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "source": f"SQLite {path}"}


def _storage(root: str, cluster: dict | None) -> dict[str, Any]:
    fs_type = mount_fs_type(root) if (SHARED_URI.match(root) is None and os.path.isdir(root)) else None
    machines = (cluster or {}).get("machines", 1)
    warning = storage_warning(root, machines, fs_type) if fs_type or SHARED_URI.match(root) else None
    return {"root": root, "fs_type": fs_type, "shared": is_shared_root(root, fs_type), "warning": warning}


# ------------------------------------------------------------------ rendering


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(x: float) -> str:
    return f"{x:g}"


def render(data: dict[str, Any]) -> str:
    """The one-screen text of ``genaug status``."""
    lines: list[str] = []
    cl = data.get("ray")
    if cl is None:
        lines.append(
            f"genaug status: no genaug service is running for {data['home']} ({data.get('error', '')}). "
            f"Start one with `genaug serve --home {data['home']}`, or set RAY_ADDRESS=HEAD:6379 "
            "to look at a cluster."
        )
    else:
        lines.append(
            f"Ray {cl['address']}: {cl['nodes_alive']} node(s) alive"
            + (f", {cl['nodes_dead']} dead" if cl["nodes_dead"] else "")
            + f" on {cl['machines']} machine(s); CPU {_num(cl['cpus_free'])} free of {_num(cl['cpus'])}"
            + f", GPU {_num(cl['gpus_free'])} free of {_num(cl['gpus'])}"
        )
        for n in cl["nodes"][:8]:
            role = "head" if n["head"] else "worker"
            lines.append(
                f"  {n['node_id'][:12]}  {role:<6}  {n['address']:<15}  {n['hostname'][:20]:<20}"
                f"  CPU {_num(n['cpus'])}  GPU {_num(n['gpus'])}"
            )
        if len(cl["nodes"]) > 8:
            lines.append(f"  ... and {len(cl['nodes']) - 8} more node(s)")
    sv = data.get("serve")
    if sv is not None:
        if not sv["running"]:
            lines.append("Serve: not running on this cluster")
        elif not sv["applications"]:
            lines.append("Serve: running, no application deployed (genaug serve, or serve deploy)")
        for name, app in (sv.get("applications") or {}).items():
            lines.append(
                f"Serve app {name!r}: {app['status']}" + (f" - {app['message']}" if app["message"] else "")
            )
            for d, ds in app["deployments"].items():
                reps = ", ".join(f"{n} {s}" for s, n in sorted(ds["replicas"].items())) or "no replicas"
                lines.append(f"  {d:<12} {ds['status']:<10} {reps}")
        if sv.get("proxies"):
            healthy = sum(1 for s in sv["proxies"].values() if s == "HEALTHY")
            lines.append(f"  HTTP proxies: {healthy} healthy of {len(sv['proxies'])}")
    if (data.get("service") or {}).get("url"):
        lines.append(f"URL: {data['service']['url']}  (genaug serve, pid {data['service']['pid']})")
    lines += _render_queue(data.get("queue"))
    st = data["storage"]
    kind = "object store" if SHARED_URI.match(st["root"]) else (st["fs_type"] or "not on this machine")
    lines.append(f"Storage root: {st['root']}  ({kind}{', shared' if st['shared'] else ''})")
    if st.get("warning"):
        lines.append(f"  WARNING: {st['warning']}")
    return "\n".join(lines)


def _render_queue(q: dict | None) -> list[str]:
    if q is None:
        return ["Queue: no queue yet (no job was ever submitted here)"]
    if "error" in q:
        return [f"Queue ({q['source']}): unreadable: {q['error']}"]
    c = q["counts"]
    lines = [
        f"Queue ({q['source']}): {c['queued']} queued, {c['running']} running; "
        f"{c['succeeded']} succeeded, {c['failed']} failed, {c['cancelled']} cancelled"
    ]
    if q["by_priority"]:
        lines.append(
            "  "
            + "  ".join(f"priority {p['priority']}: {p['queued']}q/{p['running']}r" for p in q["by_priority"])
        )
    old = q.get("oldest_queued")
    if old:
        lines.append(
            f"  oldest waiting: {old['id']} (priority {old['priority']}, {old['total_rows']:,} rows) "
            f"for {_ago(old['waiting_s'])}"
        )
        nxt = q.get("next_queued")
        if nxt and nxt["id"] != old["id"]:
            lines.append(f"  next to run: {nxt['id']} (priority {nxt['priority']})")
    return lines


def run(args) -> int:
    """``genaug status [--json]``: 0 when the genaug app is running, 1 otherwise."""
    data = collect(args.home)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(render(data))
    apps = ((data.get("serve") or {}).get("applications")) or {}
    running = (apps.get(APP_NAME) or {}).get("status") == "RUNNING"
    sys.stdout.flush()
    return 0 if running else 1
