"""The shared service kit of PixSim7. Each module is one small, documented piece."""
