"""Exact toy models: categorical oracles of the DDO objective (`categorical`) and the 2-D mixture study
(`toy2d`)."""
