"""The job service of PixSim7."""
