"""No library warning reaches a user's terminal: evaluation flows are connected (jobflow
warns about disconnected jobs), and the CLI filters pymatgen's noble-gas warning only."""

from __future__ import annotations

import subprocess
import sys
import warnings

from pymatgen.core import Lattice, Structure

from surfflows.flows.evaluate import EvaluateMaker


def test_evaluation_flow_is_one_connected_graph():
    bulk = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    items = [(f"set:{i}", "bulk", bulk, False) for i in range(3)]
    flow = EvaluateMaker(modes=("single_point", "relaxed"), chunk_size=2).make("set", items)
    assert len(flow.jobs) == 5  # two chunks per mode and the summary
    assert flow.output.uuid == flow.jobs[-1].uuid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        order = list(flow.iterflow())
    assert order[-1][0].uuid == flow.output.uuid  # the summary runs last


def test_cli_filter_hides_the_noble_gas_electronegativity_warning_only():
    code = (
        "import warnings\n"
        "from pymatgen.core import Composition\n"
        "from surfflows.cli.common import quiet_library_warnings\n"
        "warnings.simplefilter('error')\n"
        "quiet_library_warnings()\n"
        "print(Composition('ArCu').reduced_formula)\n"
        "warnings.warn('a warning of our own')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ArCu" or result.stdout.strip() == "CuAr", result.stderr
    assert "UserWarning: a warning of our own" in result.stderr  # other warnings still raise
