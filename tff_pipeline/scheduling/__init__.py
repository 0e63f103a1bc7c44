"""Simulated time and client scheduling: devices, the clock, round policies,
client selection and the per-client records that feed compensation back.

Import the modules of this package directly (`from tff_pipeline.scheduling
import clock`); this file only documents the package.
"""
