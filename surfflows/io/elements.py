"""DFT elemental references (chemical potentials) from an ingested reference set.

``mp_elemental_refs`` holds the Materials Project PBE ground state of each element; its
energies per atom are the DFT side of elemental chemical potentials (metal references) and
the references of model-versus-DFT formation energies (the error builder's bulk rows).
"""

from __future__ import annotations

from maggma.core import Store
from pymatgen.core import Composition

from surfflows.stores import using_store

#: The packaged set of elemental ground states (Materials Project PBE, via matcalc).
ELEMENTAL_SET = "mp_elemental_refs"


def dft_elemental_references(
    set_name: str = ELEMENTAL_SET, references: Store | None = None
) -> dict[str, float]:
    """Element -> lowest DFT energy per atom among the set's single-element bulks, eV/atom.

    Parameters
    ----------
    set_name
        An ingested reference set of elemental bulks (``surfflows ingest mp_elemental_refs``).
    references
        References store, left open; default the ``references`` store of the settings.

    Raises
    ------
    ValueError
        If the store holds no single-element bulk of the set.
    """
    lowest: dict[str, float] = {}
    with using_store(references, "references") as store:
        docs = store.query(
            {"set_name": set_name, "doc_type": "bulk"},
            properties=["formula", "ref_energy_per_atom"],
        )
        for doc in docs:
            elements = Composition(doc["formula"]).elements
            if len(elements) == 1:
                el = elements[0].symbol
                lowest[el] = min(doc["ref_energy_per_atom"], lowest.get(el, float("inf")))
    if not lowest:
        raise ValueError(
            f"the references store has no elemental bulks of {set_name!r}: run "
            f"surfflows ingest {set_name}"
        )
    return lowest
