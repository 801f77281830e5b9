"""Per-machine calibration of what real serving costs beyond a network's isolated forward pass.

`calibration.file` (no torch): the versioned file, loading / saving, and what the simulator needs from it.
`calibration.measure` (torch, testbed): `calibrate(device)` measures it with real server processes.
`coinsim calibrate` runs it once per machine and device and caches the result.
"""

from calibration.file import (
    Calibration,
    CalibrationError,
    default_path,
    load_calibration,
    machine_key,
    save_calibration,
)

__all__ = ["Calibration", "CalibrationError", "default_path", "load_calibration", "machine_key", "save_calibration"]
