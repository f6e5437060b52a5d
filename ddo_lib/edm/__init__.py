"""EDM / EDM2 diffusion family (Karras et al. 2022, 2024)."""
