"""Writing datasets: sources listed, images checked, rows shuffled, Parquet shards + manifest."""
