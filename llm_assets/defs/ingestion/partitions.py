import dagster as dg

# One partition per landed source; the landing sensor adds them as folders appear.
sources_partitions = dg.DynamicPartitionsDefinition(name="sources")
