"""``genaug``: the command line.

    genaug train --model cgan --dataset digits --name digits-cgan --workers 2
    genaug models
    genaug serve                  # then, from another shell: genaug status
    genaug quickstart

Every subcommand takes ``--home`` (default ``$GENAUG_HOME`` or ``./genaug-data``). Bad input exits with
status 2 and a message naming the bad value and the valid options.
"""

from __future__ import annotations

import argparse
import sys

from jobs.store.location import HOME_HELP, resolve_home, state_dir


def _home_parent(default: object = None) -> argparse.ArgumentParser:
    """``--home``; sub-actions pass ``argparse.SUPPRESS`` so they keep a ``--home`` given before them."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--home", default=default, help=HOME_HELP)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from jobs.train import run

    run(args)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from jobs.store.registry import Registry

    reg = Registry(args.home)
    rows = []
    for mv in reg.list():
        info = mv.info
        shape = "x".join(str(d) for d in info.get("image_shape") or [])
        losses = " ".join(f"{k}={v:.3f}" for k, v in (info.get("final_losses") or {}).items())
        rows.append(
            [
                mv.ref,
                info.get("type", "?"),
                info.get("dataset", "?"),
                shape,
                str(len(info.get("classes", []))),
                str(info.get("epochs", "")),
                losses,
                info.get("created_at", ""),
            ]
        )
    if not rows:
        print(
            f"no models under {reg.root} "
            "(train one: genaug train --model cgan --dataset digits --name digits-cgan)"
        )
        return 0
    print_table(["MODEL", "TYPE", "DATASET", "SHAPE", "CLASSES", "EPOCHS", "FINAL LOSSES", "CREATED"], rows)
    return 0


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def _service(args: argparse.Namespace):
    """A client of ``$GENAUG_URL`` when set, else the embedded default started for this command."""
    import contextlib
    import os
    import secrets

    from cluster.client import Client

    if os.environ.get("GENAUG_URL"):
        return contextlib.nullcontext(Client())

    @contextlib.contextmanager
    def embedded():
        from jobs.rayinit import select_ingress

        select_ingress()  # the default ingress, before Ray Serve is imported
        from cluster.service import local_service

        print("starting the embedded service (local Ray, Serve on 127.0.0.1, SQLite) ...", file=sys.stderr)
        token = secrets.token_urlsafe(32)  # its own token, for the API and for $GENAUG_OUTPUT_ROOTS
        with local_service(args.home, app_args={"api_token": token, "output_token": token}) as url:
            yield Client(url, token=token)

    return embedded()


def cmd_generate(args: argparse.Namespace) -> int:
    import os

    from jobs.generate import new_job_id, request_from_args, validate_request

    req = request_from_args(args)
    if not os.environ.get("GENAUG_URL"):  # embedded: reject bad input before starting anything
        validate_request(req, args.home, job_id=new_job_id())
    with _service(args) as client:
        job = client.submit_job(req, idempotency_key=args.idempotency_key)
        print(job["id"])
        if not args.wait:
            return 0
        job = client.wait(job["id"])
    return _print_outcome(job)


def _print_outcome(job: dict) -> int:
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}".rstrip(), file=sys.stderr)
        return 1
    totals = (job.get("result") or {}).get("totals", {})
    print(f"output: {job['output']}")
    print(f"rows: {totals.get('rows', job['rows_done']):,} in {job['total_shards']} shards")
    per_class = totals.get("per_class") or {}
    print("per class: " + ", ".join(f"{k}={v:,}" for k, v in per_class.items()))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    with _jobs_backend(args) as backend:
        if args.jobs_command == "list":
            jobs = backend.jobs(args.status)
            rows = [
                [
                    j["id"],
                    j["status"],
                    (j.get("spec") or {}).get("model", ""),
                    f"{j['progress']:.0%}",
                    f"{j['rows_done']:,}/{j['total_rows']:,}",
                    str(j.get("priority", 0)),
                    _ts(j["created_at"]),
                ]
                for j in jobs
            ]
            if not rows:
                print("no jobs")
            else:
                print_table(["ID", "STATUS", "MODEL", "PROGRESS", "ROWS", "PRIORITY", "CREATED"], rows)
        elif args.jobs_command == "show":
            print(json.dumps(backend.job(args.id), indent=2, sort_keys=True))
        elif args.jobs_command == "cancel":
            job = backend.cancel(args.id)
            print(f"{job['id']} {job['status']}")
    return 0


def _ts(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _jobs_backend(args: argparse.Namespace):
    """``genaug jobs`` talks to ``$GENAUG_URL``, or reads and writes the local SQLite queue directly."""
    import contextlib
    import os

    from cluster.client import Client

    if os.environ.get("GENAUG_URL"):
        return contextlib.nullcontext(Client())
    from cluster.queue import JobStore

    store = JobStore(state_dir(args.home) / "queue.sqlite")  # always local (jobs.store.location.state_dir)

    class Local:
        def jobs(self, status):
            return store.list(status=status)

        def job(self, job_id):
            return store.get(job_id)

        def cancel(self, job_id):
            return store.cancel(job_id)

    return contextlib.nullcontext(Local())


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading
    import time

    from jobs.rayinit import ray_session, select_ingress

    select_ingress(args.ingress)  # before Ray Serve is imported: its settings are read at import
    from cluster.service import deploy, is_loopback, undeploy
    from cluster.status import forget_service, record_service

    if not is_loopback(args.host) and not os.environ.get("GENAUG_API_TOKEN") and not args.insecure:
        raise ValueError(
            f"refusing to bind non-loopback host {args.host!r} without GENAUG_API_TOKEN; "
            "set a token, or pass --insecure to serve without auth"
        )
    if not 1 <= args.min_replicas <= args.max_replicas:
        raise ValueError(
            f"--min-replicas {args.min_replicas} is invalid; valid: 1..--max-replicas ({args.max_replicas})"
        )
    stop = threading.Event()
    with ray_session():
        # after Ray started: its own SIGTERM handler (installed by ray.init) would abort the process
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        warned = _warn_storage(args.home)
        app_args = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "gpu_per_replica": args.gpu_per_replica,
        }
        url = deploy(args.home, args.host, args.port, app_args)
        record_service(args.home, url)
        print(
            f"genaug serving at {url}  (docs {url}/docs; storage {resolve_home(args.home)}); Ctrl-C stops",
            flush=True,
        )
        try:
            checked = time.monotonic()
            while not stop.wait(0.5):
                if not warned and time.monotonic() - checked > 30:  # autoscaled nodes join later
                    warned, checked = _warn_storage(args.home), time.monotonic()
        except KeyboardInterrupt:
            pass
        finally:
            forget_service(args.home)
        print("shutting down ...", flush=True)
        undeploy()
    return 0


def _warn_storage(home: str | None) -> bool:
    """Print the storage root warning if Ray's nodes span several machines and the root is local."""
    from cluster.status import cluster_storage_warning

    warning = cluster_storage_warning(home)
    if warning:
        print(f"genaug serve: warning: {warning}", file=sys.stderr, flush=True)
    return warning is not None


def cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import run

    return run(args)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from cluster.quickstart import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from jobs import audit, datasets, evaluate, generate, train
    from jobs.rayinit import INGRESSES

    parser = argparse.ArgumentParser(
        prog="genaug", description="genaug: synthetic training data as a service"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    home = _home_parent()

    p = sub.add_parser("train", parents=[home], help="train a model with Ray Train and register it")
    train.add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", parents=[home], help="list registered models and versions")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("generate", parents=[home], help="submit a generation job (prints its id)")
    generate.add_request_arguments(p)
    p.add_argument(
        "--wait", action="store_true", help="show progress until the job ends, then print the result"
    )
    p.add_argument(
        "--idempotency-key", default=None, help="a retried submission with this key returns the same job"
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("jobs", parents=[home], help="list, show or cancel generation jobs")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    home_again = _home_parent(argparse.SUPPRESS)
    q = jsub.add_parser("list", parents=[home_again], help="jobs, newest first")
    q.add_argument("--status", default=None, help="queued, running, succeeded, failed or cancelled")
    q = jsub.add_parser("show", parents=[home_again], help="one job as JSON")
    q.add_argument("id")
    q = jsub.add_parser("cancel", parents=[home_again], help="cancel a queued or running job")
    q.add_argument("id")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "eval", parents=[home], help="evaluate a model version's samples; writes eval.json/eval.md"
    )
    evaluate.add_arguments(p)
    p.set_defaults(func=evaluate.run)

    p = sub.add_parser(
        "audit", parents=[home], help="score a labelled dataset with a cVAE: outliers, suspected label errors"
    )
    audit.add_arguments(p)
    p.set_defaults(func=audit.run)

    p = sub.add_parser("datasets", parents=[home], help="list, show or verify generated datasets")
    datasets.add_arguments(p)
    p.set_defaults(func=datasets.run)

    p = sub.add_parser("serve", parents=[home], help="run the HTTP service until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback host without GENAUG_API_TOKEN"
    )
    p.add_argument("--min-replicas", type=int, default=1, help="generator replicas at least (default 1)")
    p.add_argument("--max-replicas", type=int, default=2, help="generator replicas at most (autoscaling)")
    p.add_argument("--gpu-per-replica", type=float, default=0.0, help="GPU fraction per generator replica")
    p.add_argument(
        "--ingress",
        choices=list(INGRESSES),
        default=None,
        help="HTTP ingress of the local Ray: HAProxy in front of ingress replicas that serve HTTP "
        "themselves, gRPC between deployments (default), or Serve's Python proxy (see README); "
        "with RAY_ADDRESS the cluster's nodes decide",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "status", parents=[home], help="cluster, Serve app, queue and storage root of a running service"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("quickstart", parents=[home], help="train two digit models, serve, generate: the demo")
    p.add_argument("--per-class", type=int, default=200, help="rows per class in the demo jobs (default 200)")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_home(args.home)
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, ConnectionError, KeyError) as e:
        print(f"genaug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
