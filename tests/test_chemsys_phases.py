"""``surfflows phases fetch``: Materials Project entries -> a phase folder the campaign reads.

No network: the entries are real pymatgen ``ComputedStructureEntry`` objects made from the
shipped Sr-Ti-O structures, with energies chosen so that every energy above the hull is a
hand calculation. They go through :func:`surfflows.io.phases.write_phase_folder`, the
function the command calls after fetching, and the folder is then read by the campaign's own
loader (:meth:`ChemicalSystemConfig.from_mapping` checks every phase).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.flows.chemsys import ChemicalSystemConfig
from surfflows.io.phases import write_phase_folder

SHIPPED = Path(__file__).parents[1] / "surfflows" / "data" / "phases" / "Sr-Ti-O"
#: Elemental energies per atom (eV), close to the Materials Project's Sr, Ti and O2.
MU = {"Sr": -1.69, "Ti": -7.90, "O": -4.95}
#: Shipped file -> (entry id, formation energy per atom, eV). SrO + SrTiO3 at (2 x -3.0 +
#: 5 x -3.5) / 7 = -3.3571 eV/atom puts Sr2TiO4 7.1 meV/atom above the hull; Ti + TiO2 at
#: 0.75 x -3.2 = -2.4 puts TiO 400 meV/atom above it; anatase is 10 meV/atom above rutile.
SHIPPED_ENTRIES = {
    "Sr": ("mp-76-GGA", 0.0),
    "Ti": ("mp-46-GGA", 0.0),
    "SrO": ("mp-2472-GGA", -3.0),
    "SrTiO3": ("mp-5229-GGA+U", -3.5),
    "Sr2TiO4": ("mp-5532-GGA+U", -3.35),
    "TiO2-rutile": ("mp-2657-GGA+U", -3.2),
    "TiO2-anatase": ("mp-390-GGA+U", -3.19),
    "TiO": ("test-TiO", -2.0),  # no MP id: the rock-salt stand-in
}


def entry(structure: Structure, entry_id: str, formation: float) -> ComputedStructureEntry:
    """An entry as MP serves them (``mp-<n>-<run type>``); other ids name a test material."""
    composition = structure.composition
    energy = sum(MU[el.symbol] * n for el, n in composition.items()) + formation * len(structure)
    data = {} if entry_id.startswith("mp-") else {"material_id": entry_id}
    return ComputedStructureEntry(structure, energy, entry_id=entry_id, data=data)


def o2_in_a_box() -> Structure:
    return Structure(Lattice.cubic(10.0), ["O", "O"], [[0, 0, 0], [0.121, 0, 0]])


def test_entries_become_a_folder_the_campaign_reads(tmp_path):
    entries = [
        entry(Structure.from_file(SHIPPED / f"{name}.cif"), entry_id, formation)
        for name, (entry_id, formation) in SHIPPED_ENTRIES.items()
    ]
    entries.append(entry(o2_in_a_box(), "mp-12957-GGA", 0.0))
    srtio3 = Structure.from_file(SHIPPED / "SrTiO3.cif")
    entries.append(entry(srtio3, "mp-5229-r2SCAN", -3.4))  # a second entry of mp-5229
    shifted = srtio3.copy()
    shifted.translate_sites(range(len(shifted)), [0.5, 0.5, 0.5])
    entries.append(entry(shifted, "test-SrTiO3-shifted", -3.499))  # SrTiO3 again, 1 meV higher

    folder = tmp_path / "Sr-Ti-O"
    when = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    selection = write_phase_folder(
        entries, folder, ["Sr", "Ti", "O"], 0.05, source="test entries", date=when
    )

    names = {"Sr", "Ti", "SrO", "SrTiO3", "Sr2TiO4", "TiO2-P4_2mnm", "TiO2-I4_1amd"}
    assert {p.phase_id for p in selection.phases} == names
    above = {p.phase_id: p.e_above_hull for p in selection.phases}
    assert above["Sr2TiO4"] == pytest.approx(-3.35 - (2 * -3.0 + 5 * -3.5) / 7, abs=1e-9)
    assert above["TiO2-I4_1amd"] == pytest.approx(0.01, abs=1e-9)
    assert above["SrTiO3"] == above["TiO2-P4_2mnm"] == 0.0
    assert selection.n_above_cutoff == 1  # TiO, 0.4 eV/atom above
    assert set(selection.left_out) == {
        "mp-5229-r2SCAN (SrTiO3)",
        "mp-12957 (O2)",
        "test-SrTiO3-shifted (SrTiO3)",
    }

    # the campaign's own loader reads it: ids, structures, every check of phases: and targets:
    campaign = ChemicalSystemConfig.from_mapping(
        {"name": "mp", "chemical_system": ["Sr", "Ti", "O"], "phases": "Sr-Ti-O"},
        tmp_path / "campaign.yaml",
    )
    structures = campaign.check_phases(tmp_path / "campaign.yaml")
    assert set(structures) == names
    matcher = StructureMatcher()
    assert matcher.fit(
        structures["TiO2-I4_1amd"], Structure.from_file(SHIPPED / "TiO2-anatase.cif")
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{n}.cif" for n in names] + ["README.md"]
    )

    readme = (folder / "README.md").read_text()
    assert "CC BY 4.0" in readme and "2026-12-07 12:00 UTC" in readme and "test entries" in readme
    assert "| `Sr2TiO4.cif` | Sr2TiO4 | I4/mmm | mp-5532 | mp-5532-GGA+U | 0.007 | 14 |" in readme
    assert "test-SrTiO3-shifted (SrTiO3): the same structure as mp-5229" in readme

    with pytest.raises(ValueError, match="not an empty folder"):
        write_phase_folder(entries, folder, ["Sr", "Ti", "O"], 0.05)


def test_bad_entries_are_one_line_errors(tmp_path):
    sro = entry(Structure.from_file(SHIPPED / "SrO.cif"), "mp-2472-GGA", -3.0)
    with pytest.raises(ValueError, match="no elemental entry of O, Sr"):
        write_phase_folder([sro], tmp_path / "a", ["Sr", "O"], 0.05)
    with pytest.raises(ValueError, match=r"'mp-2472-GGA' \(SrO\) has Sr, outside"):
        write_phase_folder([sro], tmp_path / "b", ["Ti", "O"], 0.05)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fetch_without_an_api_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["phases", "fetch", "Sr-Ti-O", "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert result.output.splitlines()[0].startswith("error: MP_API_KEY is not set")
    assert not (tmp_path / "p").exists()


def test_fetch_checks_the_system_before_any_request(tmp_path, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", "not-a-real-key")  # never sent: the input fails first
    result = CliRunner().invoke(app, ["phases", "fetch", "Sr-Xx-O", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'Xx' not an element" in result.output
