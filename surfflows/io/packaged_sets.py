"""The reference sets shipped in ``surfflows/data/references`` and their provenance."""

from __future__ import annotations

from surfflows.io.reference_set import ReferenceSetInfo

#: The sets shipped in ``surfflows/data/references`` (details in each folder's README.md).
PACKAGED_SETS = {
    info.name: info
    for info in (
        ReferenceSetInfo(
            name="jarvis_surfaces",
            level_of_theory="VASP OptB88vdW",
            source="JARVIS-DFT surface database (surface_db_dd.json, NIST), "
            "figshare doi:10.6084/m9.figshare.25832614",
            licence="CC BY 4.0",
            citation='K. Choudhary et al., "InterMat", Digital Discovery (2024), '
            "doi:10.1039/D4DD00031E",
        ),
        ReferenceSetInfo(
            name="pbe_metal_surfaces",
            level_of_theory="VASP PBE",
            source="pymatgen test files tests/files/surfaces (Materials Project-style runs)",
            licence="MIT (pymatgen)",
            citation='R. Tran et al., "Surface energies of elemental crystals", '
            "Sci. Data 3, 160080 (2016)",
        ),
        ReferenceSetInfo(
            name="rutile_oxide_slabs",
            level_of_theory="VASP PBE+U (Materials Project U values)",
            source="H. Choubisa et al., public repository mmo/datasets/*.pkl",
            licence="BSD-3-Clause",
            citation="H. Choubisa et al., Matter (2022), doi:10.1016/j.matt.2022.11.031",
        ),
        ReferenceSetInfo(
            name="mp_elemental_surfaces",
            level_of_theory="VASP PBE",
            source="Materials Project surface database via SE-CGCNN (GNscSHI/SE-CGCNN, "
            "commit 68ca723c60) data/surface_property2; bulks: matcalc MP-PBE-Element-Refs",
            licence="CC BY 4.0 (Materials Project); MIT (SE-CGCNN); BSD-3-Clause (matcalc)",
            citation='R. Tran et al., "Surface energies of elemental crystals", '
            "Sci. Data 3, 160080 (2016), doi:10.1038/sdata.2016.80",
        ),
        ReferenceSetInfo(
            name="wbm_bulks",
            level_of_theory="VASP PBE",
            source="matcalc (commit aa76b41edb) benchmark_data/"
            "wbm-random-pbe52-equilibrium-2025.1.json.gz",
            licence="CC BY 4.0 (WBM); BSD-3-Clause (matcalc)",
            citation="H.-C. Wang, S. Botti, M. A. L. Marques, npj Comput. Mater. 7, 12 (2021), "
            "doi:10.1038/s41524-020-00481-6",
        ),
        ReferenceSetInfo(
            name="mp_elemental_refs",
            level_of_theory="VASP PBE",
            source="matcalc (commit aa76b41edb) src/matcalc/elemental_refs/"
            "MP-PBE-Element-Refs.json.gz",
            licence="CC BY 4.0 (Materials Project); BSD-3-Clause (matcalc)",
            citation="A. Jain et al., APL Mater. 1, 011002 (2013)",
        ),
        ReferenceSetInfo(
            name="bo2_bulk_eos",
            level_of_theory="VASP PBE",
            source="FAIR Chemistry repository, fine-tuning tutorial data",
            licence="MIT (FAIR Chemistry)",
            citation="Z. Mehta, M. Salvador, J. R. Kitchin, ACS Appl. Mater. Interfaces 6, "
            "3630 (2014), doi:10.1021/am4059149",
        ),
    )
}
