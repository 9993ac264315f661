"""ASE's own files: ASE databases (`asedb`) and ASE trajectories (`traj`)."""

from __future__ import annotations

import numpy as np

from mlipdiv.data.formats.frames import AseFramesFormat
from mlipdiv.errors import MlipdivError, first_line


class AseDbFormat(AseFramesFormat):
    """ASE database (`ase.db`); key-value pairs and `data` entries are usable as keys.
    Units stated in the database's metadata (schnetpack's `_property_unit_dict` and
    `_distance_unit`) are read."""

    name = "asedb"
    title = "ASE database rows"

    @classmethod
    def recognises(cls, probe):
        return probe.header.startswith(b"SQLite format 3") or probe.suffix == ".db"

    def __init__(self, path, energy_key=None, forces_key=None, **units):
        super().__init__(path, energy_key, forces_key, **units)
        import ase.db

        try:
            metadata = ase.db.connect(self.path, type="db").metadata or {}
        except Exception as exc:  # sqlite3 / ASE errors on a foreign or damaged file
            raise MlipdivError(
                f"{self.path}: not a readable ASE database ({first_line(exc)})") from None
        property_units = metadata.get("_property_unit_dict") or {}
        self.file_unit("energy", property_units.get(self.energy_key),
                       "metadata '_property_unit_dict'")
        self.file_unit("length", metadata.get("_distance_unit"), "metadata '_distance_unit'")
        self.file_unit("forces", property_units.get(self.forces_key),
                       "metadata '_property_unit_dict'")

    def frames(self):
        import ase.db

        try:
            rows = ase.db.connect(self.path, type="db").select()
            for row in rows:
                atoms = row.toatoms()
                atoms.info.update(row.key_value_pairs)
                for key, value in row.get("data", {}).items():
                    value = np.asarray(value)
                    if value.shape == atoms.positions.shape:
                        atoms.arrays[key] = value
                    else:
                        atoms.info[key] = value
                yield f"{self.path.name}:row {row.id}", atoms
        except MlipdivError:
            raise
        except Exception as exc:  # sqlite3 / ASE errors on a foreign or damaged file
            raise MlipdivError(
                f"{self.path}: not a readable ASE database ({first_line(exc)})"
            ) from None


class TrajFormat(AseFramesFormat):
    """ASE trajectory (`.traj`, the binary ulm format `ase.io.Trajectory` writes): frames with
    the calculator's energy and forces, eV and eV/Angstrom as in extxyz."""

    name = "traj"
    title = "ASE trajectory (.traj, ase.io.Trajectory)"
    MAGIC = b"- of UlmASE-Traj"

    @classmethod
    def recognises(cls, probe):
        return not probe.container and (probe.header.startswith(cls.MAGIC)
                                        or probe.suffix == ".traj")

    def frames(self):
        from ase.io.trajectory import Trajectory

        try:
            trajectory = Trajectory(self.path, "r")
        except Exception as exc:  # ulm / ASE errors on a foreign or damaged file
            raise MlipdivError(f"{self.path}: not a readable ASE trajectory "
                               f"({first_line(exc)})") from None
        with trajectory:
            for index in range(len(trajectory)):
                try:
                    atoms = trajectory[index]
                except Exception as exc:  # a truncated or damaged frame
                    raise MlipdivError(f"{self.path}: frame {index}: unreadable "
                                       f"({first_line(exc)})") from None
                yield f"{self.path.name}:{index}", atoms
