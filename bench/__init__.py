"""`make bench`: raw Kafka (K) and MongoDB (M) baselines and the inbound-to-ticket pipeline.

See bench/README.md for what each number means and how it is measured.
"""
