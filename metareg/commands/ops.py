"""``metareg ops``: whether the compiled extension loaded, how it was built, and which
implementation each custom op uses on CPU and CUDA tensors (and why)."""

from __future__ import annotations

import json

import click

__all__ = ["ops"]


def _describe_build(status: dict) -> list[str]:
    b = status["build"]
    if not b:
        return []
    cuda = (f"yes (CUDA runtime {b['cuda_runtime_version'] // 1000}.{b['cuda_runtime_version'] % 1000 // 10}, "
            f"architectures {', '.join(b['cuda_arch_list']) or 'unknown'})"
            if b["cuda"] else "no")
    return [
        f"built with:  torch {b['torch_version']}, {b['compiler']}, OpenMP {'on' if b['openmp'] else 'off'}",
        f"CPU ISA:     {b['cpu_isa']} (kernels picked at load time among AVX-512, AVX2 and baseline builds)",
        f"CUDA:        {cuda}",
    ]


@click.command("ops")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def ops(as_json: bool) -> None:
    """Show whether metareg's compiled ops are in use, and why not where they are not."""
    from ..ops import status
    from ..ops._table import OPS

    s = status()
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    loaded = "loaded" if s["extension_loaded"] else "NOT loaded"
    click.echo(f"extension:   metareg._C {loaded}: {s['reason']}")
    for line in _describe_build(s):
        click.echo(line)
    r = s["runtime"]
    click.echo(f"running on:  torch {r['torch_version']}, {r['threads']} threads, "
               f"CUDA device {'available' if r['cuda_available'] else 'not available'}")
    click.echo("")
    summaries = {spec.name: spec.summary for spec in OPS}
    width = max(len(info["implementation"]) for devices in s["ops"].values() for info in devices.values())
    for op, devices in s["ops"].items():
        click.echo(f"{op}: {summaries.get(op, '')}")
        for dev, info in devices.items():
            click.echo(f"  {dev:<5} {info['implementation']:<{width}}  {info['why']}")
    if not s["extension_loaded"]:
        click.echo(f"\nThe reference (plain torch) implementation is correct but slower. Unset "
                   f"{s['disable_env']} or build the extension to use the kernels.")
