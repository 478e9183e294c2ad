"""Real local infrastructure for PixSim7: PostgreSQL, Kafka and the topics.

Used alike by `make run`, by the tests (through the pytest plugin) and by the benchmarks.
"""
