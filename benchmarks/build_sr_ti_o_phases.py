"""Build the shipped Sr-Ti-O phases from published prototypes and experimental lattice constants.

Writes one CIF per phase (conventional cell, symmetrised by pymatgen) to
``surfflows/data/phases/Sr-Ti-O/`` and the tiny test system to
``surfflows/data/phases/Sr-Ti-O-tiny/``. Every structure is generated here from its space
group, lattice constants and Wyckoff positions (the sources are listed in the folder's
README.md); nothing is downloaded. Run from the repository root::

    python benchmarks/build_sr_ti_o_phases.py

The script checks each structure (composition, number of atoms, shortest interatomic
distance) so that a typo in a coordinate fails here rather than in a relaxation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

ROOT = Path(__file__).parents[1] / "surfflows" / "data" / "phases"

#: id -> (space group, lattice, species, Wyckoff representatives, atoms in the conventional
#: cell). Sources: see surfflows/data/phases/Sr-Ti-O/README.md.
PHASES: dict[str, tuple] = {
    "SrTiO3": (
        "Pm-3m",
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O"],
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]],
        5,
    ),
    "SrO": ("Fm-3m", Lattice.cubic(5.16), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], 8),
    "TiO2-rutile": (
        "P4_2/mnm",
        Lattice.tetragonal(4.594, 2.959),
        ["Ti", "O"],
        [[0, 0, 0], [0.305, 0.305, 0]],
        6,
    ),
    "TiO2-anatase": (
        # origin choice 1 of I4_1/amd (pymatgen's setting): Ti 4a (0, 0, 0), O 8e (0, 0, z)
        "I4_1/amd",
        Lattice.tetragonal(3.7842, 9.5146),
        ["Ti", "O"],
        [[0, 0, 0], [0, 0, 0.2081]],
        12,
    ),
    "Sr2TiO4": (
        "I4/mmm",
        Lattice.tetragonal(3.884, 12.60),
        ["Sr", "Ti", "O", "O"],
        [[0, 0, 0.3553], [0, 0, 0], [0, 0.5, 0], [0, 0, 0.1598]],
        14,
    ),
    "Sr3Ti2O7": (
        "I4/mmm",
        Lattice.tetragonal(3.9001, 20.340),
        ["Sr", "Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0.5], [0, 0, 0.3177], [0, 0, 0.0975], [0, 0, 0], [0, 0, 0.1934], [0, 0.5, 0.0964]],
        24,
    ),
    "Ti2O3": (
        "R-3c",
        Lattice.hexagonal(5.157, 13.610),
        ["Ti", "O"],
        [[0, 0, 0.34445], [0.3123, 0, 0.25]],
        30,
    ),
    "TiO": ("Fm-3m", Lattice.cubic(4.177), ["Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], 8),
    "Ti": (
        "P6_3/mmc",
        Lattice.hexagonal(2.9508, 4.6855),
        ["Ti"],
        [[1 / 3, 2 / 3, 0.25]],
        2,
    ),
    "Sr": ("Fm-3m", Lattice.cubic(6.0849), ["Sr"], [[0, 0, 0]], 4),
    # Ca-Ti-O, Ba-Ti-O, Mg-Ti-O and Mg-Al-O, for the large campaign (benchmarks/chemsys_campaign.py)
    "CaTiO3": (
        # Pbnm setting of the paper, (x, y, z)_Pnma = (y, z, x)_Pbnm
        "Pnma",
        Lattice.orthorhombic(5.4423, 7.6401, 5.3796),
        ["Ca", "Ti", "O", "O"],
        [[0.0349, 0.25, 0.9934], [0.5, 0, 0], [0.4838, 0.25, 0.0710], [0.2888, 0.0371, 0.7108]],
        20,
    ),
    "CaO": ("Fm-3m", Lattice.cubic(4.811), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], 8),
    "Ca": ("Fm-3m", Lattice.cubic(5.588), ["Ca"], [[0, 0, 0]], 4),
    "BaTiO3": (
        "Pm-3m",
        Lattice.cubic(4.00),
        ["Ba", "Ti", "O"],
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]],
        5,
    ),
    "BaO": ("Fm-3m", Lattice.cubic(5.523), ["Ba", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], 8),
    "Ba": ("Im-3m", Lattice.cubic(5.028), ["Ba"], [[0, 0, 0]], 2),
    "MgTiO3": (
        "R-3",
        Lattice.hexagonal(5.0548, 13.8992),
        ["Mg", "Ti", "O"],
        [[0, 0, 0.35570], [0, 0, 0.14510], [0.31591, 0.02146, 0.24657]],
        30,
    ),
    "MgO": ("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], 8),
    "Mg": ("P6_3/mmc", Lattice.hexagonal(3.2094, 5.2108), ["Mg"], [[1 / 3, 2 / 3, 0.25]], 2),
    "MgAl2O4": (
        # origin choice 1 of Fd-3m (pymatgen's setting): Mg 8a (0 0 0), Al 16d (5/8 5/8 5/8),
        # O 32e (u u u), u = 0.2624 + 1/8 (the paper's origin choice 2 value shifted)
        "Fd-3m",
        Lattice.cubic(8.0832),
        ["Mg", "Al", "O"],
        [[0, 0, 0], [0.625, 0.625, 0.625], [0.3874, 0.3874, 0.3874]],
        56,
    ),
    "Al2O3": (
        "R-3c",
        Lattice.hexagonal(4.7589, 12.991),
        ["Al", "O"],
        [[0, 0, 0.35216], [0.30624, 0, 0.25]],
        30,
    ),
    "Al": ("Fm-3m", Lattice.cubic(4.0495), ["Al"], [[0, 0, 0]], 4),
}

TI_O = ("TiO2-rutile", "TiO2-anatase", "Ti2O3", "TiO", "Ti")
#: Folder -> phases. The Ti-O phases are the same files in every system, so their slabs are
#: computed once (the same input hash) however many systems a campaign covers.
SYSTEMS = {
    "Sr-Ti-O": ("SrTiO3", "SrO", "Sr2TiO4", "Sr3Ti2O7", "Sr", *TI_O),
    "Ca-Ti-O": ("CaTiO3", "CaO", "Ca", *TI_O),
    "Ba-Ti-O": ("BaTiO3", "BaO", "Ba", *TI_O),
    "Mg-Ti-O": ("MgTiO3", "MgO", "Mg", *TI_O),
    "Mg-Al-O": ("MgAl2O4", "Al2O3", "MgO", "Mg", "Al"),
}

#: The tiny test system: SrTiO3 with the binary oxides and metals that bound it.
TINY = ("SrTiO3", "SrO", "TiO2-rutile", "Ti", "Sr")

#: Shortest distance any two atoms of these ionic and metallic crystals may have, Å.
MIN_DISTANCE = 1.8


def build(phase_id: str) -> Structure:
    """The conventional cell of one phase, checked."""
    group, lattice, species, coords, n_atoms = PHASES[phase_id]
    structure = Structure.from_spacegroup(group, lattice, species, coords)
    if len(structure) != n_atoms:
        raise ValueError(f"{phase_id}: {len(structure)} atoms, expected {n_atoms}")
    distances = structure.distance_matrix[~np.eye(len(structure), dtype=bool)]
    if len(structure) > 1 and distances.min() < MIN_DISTANCE:
        raise ValueError(f"{phase_id}: atoms {distances.min():.2f} Å apart")
    return structure


def main() -> None:
    for folder, ids in (*SYSTEMS.items(), ("Sr-Ti-O-tiny", TINY)):
        out = ROOT / folder
        out.mkdir(parents=True, exist_ok=True)
        for phase_id in ids:
            structure = build(phase_id)
            CifWriter(structure, symprec=1e-3).write_file(out / f"{phase_id}.cif")
            print(
                f"{folder}/{phase_id}.cif: {structure.composition.reduced_formula}, "
                f"{len(structure)} atoms, {structure.get_space_group_info()[0]}"
            )


if __name__ == "__main__":
    main()
