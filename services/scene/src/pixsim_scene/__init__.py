"""The scene service of PixSim7."""
