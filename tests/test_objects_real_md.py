"""Issue 23 item 2: real MD outputs and PDB/mmCIF entries (MDAnalysisTests' data, the ``test`` extra).

Waters, ions and lipids written as ATOM records inside a protein's chain, caps, force-field residue names,
nucleic acids in CHARMM names, multi-model files and GROMOS trajectories, none of them written for gflow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gflow.objects import Structure

gemmi = pytest.importorskip("gemmi")
_SPEC = importlib.util.find_spec("MDAnalysisTests")  # found, not imported: importing it imports MDAnalysis
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip("MDAnalysisTests is not installed (pip install -e '.[test]')", allow_module_level=True)
DATA = Path(next(iter(_SPEC.submodule_search_locations))) / "data"

ADK = ("MRIILLGAPGAGKGTQAQFIMEKYGIPQISTGDMLRAAVKSGSELGKQAKDIMDAGKLVTDELVIALVKERIAQEDCRNGFLLDGFPRTIPQADAMKEAG"
       "INVDYVLEFDVPDELIVDRIVGRRVHAPSGRVYHVKFNPPKVEGKDDVTGEELTTRKDDQEETVRKRLVEYHQMTAPLIGYYSKEAEAGNTKYAKVDGT"
       "KPVAEVRADLEKILG")
COBROTOXIN = "LECHNQQSSQTPTTTGCSGGETNCYKKRWRDHRGYRTERGCGCPSVKNGIEINCCTTDRCNN"


@pytest.mark.parametrize(("name", "sequence"), [
    ("adk_oplsaa.pdb", ADK),  # 10,004 SOL waters and ions in the protein's chain: were 10,218 letters
    ("cobrotoxin.pdb", COBROTOXIN),  # waters and ions in the chain: were 4,693 letters
    ("adk_closed.pdb", ADK),  # CHARMM's HSD is histidine (gemmi's table says X)
    ("sameresid_diffresname.pdb", "Q"),  # a POPC lipid with the glutamine's residue number
    ("capping/ace.pdb", "A"),  # ACE cap
    ("capping/nma.pdb", "A"),  # NMA cap (a CA-named methyl and an N: a cap all the same)
    ("capping/maestro_aaqaa_capped.pdb", "AAQAAAAQAAAAQA"),  # ACE ... NMA
    ("analysis/1k5i_c36.pdb.gz", "GGACCCGGGCUCAACCUGGGUCC"),  # CHARMM RNA names, TIP3 waters, POT ions
    ("gromos11/gromos11_traj_solv.pdb.gz", "VYRQK"),  # GROMOS: bare MODEL, SOLV waters, CL- ions
    ("mmcif/3PWP.cif.gz", None),  # glycerol, sulfate, waters: compared with gemmi below
])
def test_md_outputs_have_their_polymer_sequence(name: str, sequence: str | None) -> None:
    structure = Structure.from_file(DATA / name)
    if sequence is None:
        sequence = _gemmi_polymer(DATA / name)
    assert structure.sequence() == sequence
    assert structure.num_residues == len(sequence)


def _gemmi_polymer(path: Path) -> str:
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_ligands_and_waters()
    return "".join(gemmi.one_letter_code([r.name for r in ch.get_polymer().first_conformer()]) for ch in st[0])


def test_multi_model_files_read_as_gemmi_reads_them() -> None:
    nmr = Structure.from_file(DATA / "nmr_neopetrosiamide.pdb")
    assert (nmr.num_models, nmr.sequence()) == (24, "FFCPFGCALVDCGPNRPCRDTGFMSCDC")
    # a lone MODEL header without ENDMDL (as MDAnalysis writes one frame): one model, not an error
    single = Structure.from_file(DATA / "nucl_res.pdb")
    assert single.num_models == len(gemmi.read_structure(str(DATA / "nucl_res.pdb"))) == 1
    # GROMOS writes a bare MODEL line; ENDMDL with no MODEL record at all ends a model, as in gemmi
    atoms = [ln for ln in (DATA / "capping" / "ace.pdb").read_text().splitlines() if ln.startswith("ATOM")]
    frames = "\n".join([*atoms, "ENDMDL", *atoms, "ENDMDL", "END"]) + "\n"
    assert Structure(text=frames).num_models == len(gemmi.read_pdb_string(frames)) == 2


def test_a_calcium_ion_named_ca_is_no_residue() -> None:
    atoms = [ln for ln in (DATA / "capping" / "ace.pdb").read_text().splitlines() if ln.startswith("ATOM")]
    ion = "HETATM  999 CA    CA A 900       1.000   2.000   3.000  1.00  0.00          CA"
    assert Structure(text="\n".join([*atoms, ion, "END"]) + "\n").sequence() == "A"
