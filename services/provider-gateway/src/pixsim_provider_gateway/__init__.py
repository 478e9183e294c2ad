"""The provider gateway service of PixSim7."""
