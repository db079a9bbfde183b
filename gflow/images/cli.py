"""``gflow build``, ``gflow replay`` and ``gflow worker`` (registered by :mod:`gflow.cli`)."""

from __future__ import annotations

import sys

import click


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("target")
@click.option("--push", "registry", default=None, metavar="REGISTRY",
              help="Push the image to this registry (host:port) unless it is there already.")
@click.option("--dry-run", is_flag=True, help="Render the context and print the tag; no engine needed.")
@click.option("--dev", is_flag=True, help="The deps-only image of dev mode (code travels as a bundle).")
@click.option("--host", default=None, help="Docker engine URL (default: DOCKER_HOST or the default socket).")
@click.option("--refresh-lock", is_flag=True, help="Resolve unpinned dependencies again.")
@click.option("--context-out", default=None, type=click.Path(file_okay=False),
              help="Also write the rendered context (Dockerfile, lock, code) to this folder.")
def build(target: str, registry: str | None, dry_run: bool, dev: bool, host: str | None, refresh_lock: bool,
          context_out: str | None) -> None:
    """Build the image of a flow (TARGET: path/to/file.py:flow) if its tag is absent; print the tag.

    Tasks with their own gflow.Image in the flow's module are built too (their tags go to stderr).
    """
    from gflow._loader import load_target
    from gflow.flows import Flow
    from gflow.images.builders import with_registry
    from gflow.images.context import flow_context, task_context
    from gflow.tasks import Task

    flow = load_target(target, Flow)
    ctx = flow_context(flow, dev=dev, refresh_lock=refresh_lock)
    module = sys.modules.get(flow.fn.__module__)
    tasks = sorted({id(t): t for t in vars(module).values() if isinstance(t, Task)}.values(),
                   key=lambda t: t.name) if module else []
    contexts = [("flow", ctx)] + [(f"task {t.name}", c) for t in tasks
                                   if (c := task_context(t, flow.name, dev=dev)) is not None]
    if context_out:
        ctx.materialize(context_out, None if dry_run else ctx.fetch_wheels())
    if not dry_run:
        from gflow.images.builders import DockerBuilder

        builder = DockerBuilder(base_url=host)
        for label, c in contexts:
            res = builder.ensure(c, registry=registry, push=bool(registry))
            what = "built" if res.built else "pulled" if res.pulled else "present, not rebuilt"
            _err(f"{label}: {c.tag} {what} ({res.seconds:.1f}s)" + (f"; pushed {res.pushed}" if res.pushed else ""))
    for label, c in contexts[1:]:
        _err(f"{label}: {with_registry(c.tag, registry)}")
    click.echo(with_registry(ctx.tag, registry))


@click.command()
@click.argument("run_id")
@click.option("--executor", "-e", default=None,
              help="Executor for the replay (default: docker with the recorded image).")
@click.option("--store", default=None, help="State store URL (default: the profile's).")
@click.option("--artifacts", default=None, help="Artifact store folder or URL.")
@click.option("--profile", default=None, help="Profile from gflow.toml.")
@click.option("--run-id", "new_run_id", default=None, help="Id for the replay's run (default: a fresh one).")
def replay(run_id: str, executor: str | None, store: str | None, artifacts: str | None, profile: str | None,
           new_run_id: str | None) -> None:
    """Run RUN_ID again from its recorded image with its recorded inputs; report whether outputs match.

    Exit code: 0 identical outputs, 1 the replay failed, 3 the outputs differ.
    """
    from gflow.images.replay import replay as do_replay

    report = do_replay(run_id, executor=executor, store=store, artifacts=artifacts, profile=profile,
                       run_id_new=new_run_id)
    click.echo(f"replay of {report.original.id}: run {report.run_id} {report.state.value}")
    click.echo(f"image: {report.image}")
    if report.error is not None:
        _err(f"error: the replay failed: {str(report.error).splitlines()[0]}")
    if report.identical:
        click.echo(f"outputs identical: yes ({report.compared} results compared)")
        sys.exit(0)
    click.echo(f"outputs identical: no ({len(report.differences)} of {report.compared} differ)")
    for d in report.differences:
        click.echo(f"  {d}")
    sys.exit(1 if report.error is not None else 3)


@click.command()
@click.argument("spec")
@click.option("--artifacts", envvar="GFLOW_ARTIFACTS", default=None, help="Artifact store URL (or GFLOW_ARTIFACTS).")
@click.option("--index", type=int, default=None,
              help="Element of an array spec (default: AWS_BATCH_JOB_ARRAY_INDEX or VC_TASK_INDEX).")
def worker(spec: str, artifacts: str | None, index: int | None) -> None:
    """Run one call spec (SPEC: its sha256 digest in the artifact store) and write its outcome.

    Exit code: 0 success, 1 the task raised, 2 the call could not be run (see the outcome record).
    """
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.images.worker import array_index, run_spec

    arts = open_artifacts(artifacts or load_profile().artifacts)
    sys.exit(run_spec(arts, spec, array_index(index)))
