"""Folders of competing phases for chemical-system campaigns, from Materials Project entries.

``surfflows phases fetch Sr-Ti-O --out DIR`` fetches every entry of the system and its
subsystems (:func:`fetch_entries`, MP's own mixed GGA/GGA+U/r2SCAN hull) and hands them to
:func:`write_phase_folder`, which keeps those within an energy above hull and writes one CIF
per phase plus a ``README.md`` with the provenance. The folder is what a campaign's
``phases:`` reads (:meth:`surfflows.flows.chemsys.ChemicalSystemConfig.phase_files`): a
phase's id is its file name without ``.cif``.

Selection (:func:`select_phases`), in order:

1. one entry per Materials Project id (the lowest in energy per atom);
2. the energy above hull from pymatgen's ``PhaseDiagram`` of all the entries handed in (for
   MP's entries, the hull the Materials Project shows), kept if at most ``max_e_above_hull``;
3. elemental phases of gaseous elements (solid O2, N2, ...) left out: the campaign's own
   reference of such an element is its molecule relaxed in a box;
4. of entries that pymatgen's ``StructureMatcher`` finds the same (the campaign refuses two
   files of one structure, :func:`duplicate_structures`), the lowest in energy kept.

Names: the reduced formula (``SrTiO3``); polymorphs of one formula get the space group, ``/``
dropped (``TiO2-P4_2mnm``, ``TiO2-I4_1amd``), and the Materials Project id where that is
not enough (``TiO2-Pbca-mp-1234``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from surfflows.core.chempot import MAX_ELEMENTS

#: Elements whose elemental phase is a molecular gas: the campaign's reference is the molecule.
GAS_ELEMENTS = frozenset({"H", "N", "O", "F", "Cl", "He", "Ne", "Ar", "Kr", "Xe", "Rn"})
#: Symmetry tolerance of the space-group names, Å (the Materials Project's).
SYMPREC = 0.1
MP_LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
MP_CITATION = (
    'A. Jain, S. P. Ong, G. Hautier et al., "Commentary: The Materials Project: A materials '
    'genome approach to accelerating materials innovation", APL Materials 1, 011002 (2013), '
    "doi:10.1063/1.4812323"
)
_MP_ID = re.compile(r"^((?:mp|mvc)-\d+)")


@dataclass(frozen=True)
class Phase:
    """One phase written to the folder."""

    phase_id: str
    formula: str
    space_group: str
    material_id: str
    entry_id: str
    e_above_hull: float
    structure: Structure = field(repr=False)

    @property
    def file_name(self) -> str:
        """The CIF's name (the campaign's phase id plus ``.cif``)."""
        return f"{self.phase_id}.cif"


@dataclass
class PhaseSelection:
    """The phases kept, why each other entry within the cut-off was left out, and the count
    of entries above it."""

    phases: list[Phase]
    left_out: dict[str, str]
    n_above_cutoff: int


def parse_chemical_system(text: str | Sequence[str]) -> list[str]:
    """``"Sr-Ti-O"`` (or a list of symbols) -> ``["Sr", "Ti", "O"]``, else ValueError.

    Examples
    --------
    >>> parse_chemical_system("Sr-Ti-O")
    ['Sr', 'Ti', 'O']
    """
    symbols = [s.strip() for s in text.split("-")] if isinstance(text, str) else list(text)
    bad = [s for s in symbols if not Element.is_valid_symbol(s)]
    if bad:
        raise ValueError(f"chemical system {text!r}: {', '.join(map(repr, bad))} not an element")
    if len(set(symbols)) != len(symbols) or not 2 <= len(symbols) <= MAX_ELEMENTS:
        raise ValueError(
            f"chemical system {text!r}: give 2 to {MAX_ELEMENTS} different elements, e.g. Sr-Ti-O"
        )
    return symbols


def material_id_of(entry: ComputedStructureEntry) -> str:
    """The Materials Project id of an entry (``mp-5229`` of ``mp-5229-GGA+U``, or its
    ``data["material_id"]``), else ValueError naming the entry."""
    match = _MP_ID.match(str(entry.entry_id or ""))
    if match:
        return match.group(1)
    if entry.data.get("material_id"):
        return str(entry.data["material_id"])
    raise ValueError(f"entry {entry.entry_id!r} ({entry.reduced_formula}): no Materials Project id")


def duplicate_structures(structures: dict[str, Structure]) -> list[tuple[str, str]]:
    """Pairs of ids whose structures pymatgen's StructureMatcher finds the same (same
    composition, lattice and sites up to its default tolerances), in the order of
    ``structures``."""
    matcher = StructureMatcher()
    ids = list(structures)
    pairs = []
    for i, first in enumerate(ids):
        for second in ids[i + 1 :]:
            a, b = structures[first], structures[second]
            if a.composition.reduced_composition != b.composition.reduced_composition:
                continue
            if matcher.fit(a, b):
                pairs.append((first, second))
    return pairs


def select_phases(
    entries: Sequence[ComputedStructureEntry],
    chemical_system: Sequence[str],
    max_e_above_hull: float,
) -> PhaseSelection:
    """The phases of ``chemical_system`` within ``max_e_above_hull`` (eV/atom) of the hull
    of ``entries``, named and free of duplicates (see the module docstring).

    Raises
    ------
    ValueError
        For an entry without a structure or a Materials Project id, an entry with an element
        outside the system, an element without an elemental entry (no hull), or a negative
        cut-off.
    """
    if max_e_above_hull < 0:
        raise ValueError(f"energy above hull {max_e_above_hull}: must be >= 0 eV/atom")
    system = set(parse_chemical_system(chemical_system))
    by_id, left_out = _one_per_material(entries, system)
    elemental = {e.elements[0].symbol for e in by_id.values() if e.composition.is_element}
    missing = sorted(system - elemental)
    if missing:
        raise ValueError(f"no elemental entry of {', '.join(missing)}: no hull without one")
    diagram = PhaseDiagram(list(by_id.values()))
    above = {mp_id: float(diagram.get_e_above_hull(e)) for mp_id, e in by_id.items()}
    candidates = sorted(
        (mp_id for mp_id in by_id if above[mp_id] <= max_e_above_hull + 1e-9),
        key=lambda mp_id: (above[mp_id], by_id[mp_id].energy_per_atom, mp_id),
    )
    n_above = len(by_id) - len(candidates)
    kept_ids = []
    for mp_id in candidates:
        composition = by_id[mp_id].composition
        if composition.is_element and composition.elements[0].symbol in GAS_ELEMENTS:
            left_out[f"{mp_id} ({composition.reduced_formula})"] = (
                f"solid {composition.elements[0].symbol}: the campaign's reference is the "
                "molecule relaxed in a box"
            )
        else:
            kept_ids.append(mp_id)
    structures = {mp_id: by_id[mp_id].structure for mp_id in kept_ids}
    dropped: set[str] = set()
    for first, second in duplicate_structures(structures):  # first is the lower one
        if first not in dropped and second not in dropped:
            dropped.add(second)
            formula = structures[second].composition.reduced_formula
            left_out[f"{second} ({formula})"] = (
                f"the same structure as {first} (StructureMatcher) and higher in energy"
            )
    kept_ids = [mp_id for mp_id in kept_ids if mp_id not in dropped]
    names = phase_names({mp_id: structures[mp_id] for mp_id in kept_ids})
    phases = [
        Phase(
            phase_id=names[mp_id],
            formula=by_id[mp_id].reduced_formula,
            space_group=space_group(structures[mp_id]),
            material_id=mp_id,
            entry_id=str(by_id[mp_id].entry_id),
            e_above_hull=above[mp_id],
            structure=structures[mp_id],
        )
        for mp_id in kept_ids
    ]
    phases.sort(key=lambda p: p.phase_id)
    return PhaseSelection(phases=phases, left_out=left_out, n_above_cutoff=n_above)


def _one_per_material(
    entries: Sequence[ComputedStructureEntry], system: set[str]
) -> tuple[dict[str, ComputedStructureEntry], dict[str, str]]:
    """Materials Project id -> its lowest entry per atom, and the others left out (with why);
    ValueError for an entry without a structure or with an element outside ``system``."""
    by_id: dict[str, ComputedStructureEntry] = {}
    left_out: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, ComputedStructureEntry):
            raise ValueError(f"entry {entry.entry_id!r} ({entry.reduced_formula}): no structure")
        outside = sorted({el.symbol for el in entry.composition} - system)
        if outside:
            raise ValueError(
                f"entry {entry.entry_id!r} ({entry.reduced_formula}) has {', '.join(outside)}, "
                f"outside {'-'.join(sorted(system))}"
            )
        mp_id = material_id_of(entry)
        kept = by_id.get(mp_id)
        if kept is not None and kept.energy_per_atom <= entry.energy_per_atom:
            kept, entry = entry, kept
        if kept is not None:
            left_out[f"{kept.entry_id} ({kept.reduced_formula})"] = (
                f"another entry of {mp_id} is lower in energy"
            )
        by_id[mp_id] = entry
    return by_id, left_out


def space_group(structure: Structure) -> str:
    """International symbol of ``structure`` at :data:`SYMPREC` (e.g. ``P4_2/mnm``)."""
    return SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_symbol()


def phase_names(structures: dict[str, Structure]) -> dict[str, str]:
    """Materials Project id -> phase id: the reduced formula, with the space group (``/``
    dropped) for polymorphs, and the id too where polymorphs share a space group."""
    by_formula: dict[str, list[str]] = {}
    for mp_id, structure in structures.items():
        by_formula.setdefault(structure.composition.reduced_formula, []).append(mp_id)
    names = {}
    for formula, mp_ids in by_formula.items():
        if len(mp_ids) == 1:
            names[mp_ids[0]] = formula
            continue
        groups = {mp_id: space_group(structures[mp_id]).replace("/", "") for mp_id in mp_ids}
        for mp_id, group in groups.items():
            shared = list(groups.values()).count(group) > 1
            names[mp_id] = f"{formula}-{group}" + (f"-{mp_id}" if shared else "")
    return names


def check_new_folder(folder: Path) -> None:
    """ValueError unless ``folder`` is new or an empty folder (a phase folder is never mixed
    with other files: the campaign reads every structure file in it)."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder}: exists and is not an empty folder; give a new one")


def write_phase_folder(
    entries: Sequence[ComputedStructureEntry],
    folder: Path,
    chemical_system: Sequence[str],
    max_e_above_hull: float,
    source: str = "the entries given",
    date: datetime | None = None,
) -> PhaseSelection:
    """Select the phases of ``entries`` (:func:`select_phases`) and write them to ``folder``:
    ``<phase id>.cif`` each (the entry's structure as it is, P1, site labels made unique) and
    ``README.md`` (source, date, licence, per file its MP id, space group and energy above
    hull, what was left out).

    ``source`` says where the entries came from (the README's first sentence); ``date``
    defaults to now (UTC). Raises ValueError for bad entries (:func:`select_phases`) or a
    ``folder`` that exists and is not empty (nothing is written then).
    """
    check_new_folder(folder)
    selection = select_phases(entries, chemical_system, max_e_above_hull)
    folder.mkdir(parents=True, exist_ok=True)
    for phase in selection.phases:
        structure = phase.structure.copy().relabel_sites()  # unique labels (CIF)
        CifWriter(structure).write_file(folder / phase.file_name)
    (folder / "README.md").write_text(
        provenance_text(selection, chemical_system, max_e_above_hull, source, date)
    )
    return selection


def provenance_text(
    selection: PhaseSelection,
    chemical_system: Sequence[str],
    max_e_above_hull: float,
    source: str,
    date: datetime | None = None,
) -> str:
    """The folder's ``README.md``: where the structures come from, their licence, one row per
    file, and what was left out."""
    system = "-".join(chemical_system)
    when = (date or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {system} phases from the Materials Project",
        "",
        f"Written on {when} from {source}: every entry of {system} and its subsystems within "
        f"{max_e_above_hull:g} eV/atom of the hull, one CIF per phase (the entry's structure, "
        "P1). Energies above the hull are pymatgen `PhaseDiagram` distances over all the "
        "entries fetched; a campaign relaxes every phase with its own model and builds its "
        "own hull, these energies only choose the phases.",
        "",
        f"Licence of the data: {MP_LICENCE}. Cite the Materials Project: {MP_CITATION}.",
        "",
        "| file | formula | space group | MP id | entry id | E above hull (eV/atom) | atoms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in selection.phases:
        lines.append(
            f"| `{p.file_name}` | {p.formula} | {p.space_group} | {p.material_id} | "
            f"{p.entry_id} | {p.e_above_hull:.3f} | {len(p.structure)} |"
        )
    lines += [
        "",
        f"Not written: {selection.n_above_cutoff} entries more than {max_e_above_hull:g} "
        "eV/atom above the hull.",
    ]
    if selection.left_out:
        lines += ["", "Left out:", ""]
        lines += [f"- {entry}: {why}" for entry, why in sorted(selection.left_out.items())]
    return "\n".join(lines) + "\n"


def fetch_entries(
    chemical_system: Sequence[str], api_key: str
) -> tuple[list[ComputedStructureEntry], str]:
    """Every Materials Project entry of ``chemical_system`` and its subsystems (the mixed
    GGA/GGA+U/r2SCAN hull MP shows, ``MPRester.get_entries_in_chemsys``), and where they come
    from (database and client version, for the README).

    Raises
    ------
    ImportError
        ``mp-api`` is not installed.
    """
    try:
        import mp_api
        from mp_api.client import MPRester
    except ImportError as exc:
        raise ImportError(
            "phases fetch needs the Materials Project client: pip install mp-api (or surfflows[mp])"
        ) from exc
    with MPRester(api_key, mute_progress_bars=True) as mpr:
        entries = mpr.get_entries_in_chemsys(
            list(chemical_system), additional_criteria={"thermo_types": ["GGA_GGA+U_R2SCAN"]}
        )
        source = (
            f"the Materials Project (database version {mpr.db_version}, mp-api "
            f"{mp_api.__version__}, `MPRester.get_entries_in_chemsys`, mixed GGA/GGA+U/r2SCAN "
            "hull)"
        )
    return list(entries), source
