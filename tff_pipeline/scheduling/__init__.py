"""Simulated time and client scheduling: devices, the clock, round policies,
client selection and the per-client records that feed compensation back.

Import the modules of this package directly (`from tff_pipeline.scheduling
import clock`); this file only documents the package.

`config.py` names this package's registries by reference
('tff_pipeline.scheduling.policies:ROUND_POLICIES'), so that these modules
may import `config` (tests/architecture_test.py forbids import cycles between
the units of tff_pipeline).
"""
