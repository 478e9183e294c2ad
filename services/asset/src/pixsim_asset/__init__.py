"""The asset service of PixSim7."""
